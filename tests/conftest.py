"""Shared fixtures: a fresh, migrated database per test on SQLite and on PostgreSQL.

PostgreSQL tests need the server on 127.0.0.1:5432 (``HUSHGATE_TEST_PG`` overrides the
admin URL). Each test gets its own database cloned from a migrated template, so tests
never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control.core import schema
from control.core.audit import Actor
from control.core.config import Config, load_config
from control.core.context import Ctx
from control.core.db import Database

PG_ADMIN_URL = os.environ.get("HUSHGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


def _pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def _pg_exec(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database used as the template of every test database."""
    name = f"hg_tpl_{uuid.uuid4().hex[:10]}"
    _pg_exec(f'CREATE DATABASE "{name}"')
    db = Database(_pg_url(name), pool_size=1)
    schema.upgrade(db)
    db.dispose()
    yield name
    _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    db = Database(f"sqlite:///{path}", pool_size=1)
    schema.upgrade(db)
    db.dispose()  # the last connection closing checkpoints the WAL into the file
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh migrated database URL for this test, on the parametrized backend."""
    if backend == "sqlite":
        tpl: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "data" / "hushgate.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tpl, target)
        yield f"sqlite:///{target}"
        return
    tpl_name: str = request.getfixturevalue("pg_template")
    name = f"hg_t_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{tpl_name}"')
    yield _pg_url(name)
    _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_config(tmp_path: Path, db_url: str, **overrides: Any) -> Config:
    """Test configuration: cheap bcrypt, data folder in tmp_path, the given database."""
    base: dict[str, Any] = {"data_dir": str(tmp_path / "data"),
                            "database": {"url": db_url},
                            "auth": {"bcrypt_cost": 4}}
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return load_config(overrides=base)


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Config:
    return make_config(tmp_path, db_url)


@pytest.fixture
def db(config: Config) -> Iterator[Database]:
    database = Database.from_config(config)
    yield database
    database.dispose()


@pytest.fixture
def admin_actor() -> Actor:
    return Actor("cli", "test-admin")


@pytest.fixture
def uow(db: Database, config: Config, admin_actor: Actor):
    """``with uow() as ctx:`` — one committed unit of work as the test admin."""
    from contextlib import contextmanager

    @contextmanager
    def _uow(actor: Actor | None = None) -> Iterator[Ctx]:
        with db.transaction() as session:
            yield Ctx(session, config, actor or admin_actor)

    return _uow


@pytest.fixture
def funded_account(uow):
    """An active account with 10.00 (10_000_000 minor units) and no keys."""
    from control.core import accounts, wallet

    with uow() as ctx:
        account = accounts.create_account(ctx, name="Ada Lovelace", email="ada@example.com",
                                          company="Analytical", adult_attested=True)
        wallet.topup(ctx, account.id, 10_000_000, idempotency_key="seed")
        return account.id


# -- a real SMTP server ---------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.raw: list[bytes] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.arrived:
            self.raw.append(envelope.content)
            self.messages.append(message_from_bytes(envelope.content))
            self.arrived.notify_all()
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for m in self.messages if m["To"] == address]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server (aiosmtpd) on a free loopback port; yields (inbox, port)."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
def test_ca(tmp_path: Path) -> dict[str, str]:
    """A throwaway CA and a leaf for localhost/127.0.0.1 signed by it, as PEM files.

    Returns the paths of ``ca.pem``, ``cert.pem``, ``key.pem`` (unencrypted) and
    ``other_key.pem`` (a key that does not match the certificate).
    """
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("hushgate control test CA"))
          .issuer_name(name("hushgate control test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM),
             "cert.pem": leaf.public_bytes(serialization.Encoding.PEM),
             "key.pem": pem_key(key),
             "other_key.pem": pem_key(ec.generate_private_key(ec.SECP256R1()))}
    paths = {}
    for file_name, data in files.items():
        (tmp_path / file_name).write_bytes(data)
        paths[file_name] = str(tmp_path / file_name)
    return paths

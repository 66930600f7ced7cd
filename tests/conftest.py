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


# -- nothing left behind ------------------------------------------------------------------
# Every test stops what it starts. At the end of the session the run fails if a child
# process of pytest is still alive or pytest itself still holds a listening TCP socket;
# each leftover is named with the first test after which it was seen.


def _children() -> dict[int, str]:
    """Live (non-zombie) child processes of this process: pid -> command line."""
    pids: set[int] = set()
    for path in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids.update(int(p) for p in path.read_text().split())
        except OSError:
            continue
    out = {}
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
        except (OSError, IndexError):
            continue
        if state != "Z":
            out[pid] = cmd.decode(errors="replace")[:120]
    return out


def _listening_sockets() -> dict[int, str]:
    """TCP sockets in LISTEN state that this process holds open: inode -> address."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    out = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in inodes:  # 0A = LISTEN
                out[int(fields[9])] = f"{table} port {int(fields[1].rpartition(':')[2], 16)}"
    return out


class _Leftovers:
    def __init__(self) -> None:
        self.baseline = set(_children()), set(_listening_sockets())
        self.first_seen: dict[tuple[str, int], str] = {}

    def after_test(self, nodeid: str) -> None:
        for kind, now, base in (("process", _children(), self.baseline[0]),
                                ("socket", _listening_sockets(), self.baseline[1])):
            for ident in set(now) - base:
                self.first_seen.setdefault((kind, ident), nodeid)

    def remaining(self, grace: float = 5.0) -> list[str]:
        """What is still there after ``grace`` seconds for things already stopping."""
        import time

        deadline = time.monotonic() + grace
        while True:
            procs = {k: v for k, v in _children().items() if k not in self.baseline[0]}
            socks = {k: v for k, v in _listening_sockets().items() if k not in self.baseline[1]}
            if not (procs or socks) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        where = self.first_seen.get
        return ([f"child process {pid} ({cmd}), first seen after "
                 f"{where(('process', pid), 'the last test')}" for pid, cmd in procs.items()]
                + [f"listening {addr}, first seen after {where(('socket', ino), 'the last test')}"
                   for ino, addr in socks.items()])


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_LEFTOVERS] = _Leftovers()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    yield
    leftovers = item.config.stash.get(_LEFTOVERS, None)
    if leftovers is not None:
        leftovers.after_test(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leftovers = session.config.stash.get(_LEFTOVERS, None)
    if leftovers is None:
        return
    remaining = leftovers.remaining()
    if remaining:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "tests left these behind (each test must stop what it starts):\n  " + \
            "\n  ".join(remaining)
        if reporter is not None:
            reporter.write_sep("=", "leftovers", red=True)
            reporter.write_line(text)
        else:
            print(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_LEFTOVERS = pytest.StashKey[_Leftovers]()


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
def port_factory() -> Any:
    """``port_factory()`` -> a free loopback TCP port. (Test modules can't import from
    ``conftest``: several conftest.py files share that module name.)"""
    return free_port


@pytest.fixture
def config_factory(tmp_path: Path) -> Any:
    """``config_factory(db_url, **overrides)`` -> :func:`make_config` in this tmp_path."""
    return lambda url, **overrides: make_config(tmp_path, url, **overrides)


@pytest.fixture
def pg_admin() -> Any:
    """``(execute, url_of)``: run SQL as the PostgreSQL admin; the URL of a database name."""
    return _pg_exec, _pg_url


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


def make_pki(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
             ) -> dict[str, str]:
    """A throwaway CA and a server leaf for ``hosts`` signed by it, as PEM files in
    ``directory``.

    Both certificates carry what strict verification requires (Python 3.13 turns on
    ``VERIFY_X509_STRICT`` in ``ssl.create_default_context``): the CA a critical
    basicConstraints, keyUsage keyCertSign/cRLSign and a subject key identifier; the leaf an
    authority key identifier, its own key identifier, the names as subjectAltName, keyUsage
    digitalSignature and extendedKeyUsage serverAuth.

    Returns the paths of ``ca.pem``, ``cert.pem``, ``key.pem`` (unencrypted) and
    ``other_key.pem`` (a key that does not match the certificate).
    """
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def usage(*, cert_sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False,
                             key_encipherment=False, data_encipherment=False,
                             key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                             encipher_only=False, decipher_only=False)

    def san(host: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(name("hushgate control test CA"))
          .issuer_name(name("hushgate control test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(cert_sign=True), critical=True)
          .add_extension(ca_ski, critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([san(h) for h in hosts]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM),
             "cert.pem": leaf.public_bytes(serialization.Encoding.PEM),
             "key.pem": pem_key(key),
             "other_key.pem": pem_key(ec.generate_private_key(ec.SECP256R1()))}
    paths = {}
    for file_name, data in files.items():
        (directory / file_name).write_bytes(data)
        paths[file_name] = str(directory / file_name)
    return paths


@pytest.fixture
def test_ca(tmp_path: Path) -> dict[str, str]:
    """``make_pki`` in this test's tmp_path: a CA and a leaf for localhost/127.0.0.1."""
    return make_pki(tmp_path)

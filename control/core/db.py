"""Engine and session lifecycle for SQLite (embedded default) and PostgreSQL.

Services take a ``Session`` and ``flush()``; callers own the transaction through
``Database.transaction()`` (commit on success, rollback on any exception, so a refused
request never leaves a half-written row).

On SQLite every write transaction starts with ``BEGIN IMMEDIATE``: the write lock is taken
up front, so read-then-write sequences (audit chain, idempotency checks) can never act on a
stale snapshot; ``read_transaction()`` uses a deferred ``BEGIN`` so readers don't queue.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from control.core import audit_head, files
from control.core.errors import ConfigError
from control.core.models import AuditState


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` URLs and use the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _echo_to_stderr(echo: bool) -> None:
    """``database.echo``: SQL statements (never their parameters: ``hide_parameters``) to
    stderr. SQLAlchemy's own ``echo=True`` writes to stdout, which would corrupt the CLI's
    ``--json`` output."""
    if not echo:
        return
    logger = logging.getLogger("sqlalchemy.engine.Engine")
    if not any(getattr(h, "_hushgate_echo", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler._hushgate_echo = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(asctime)s sql %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def create_db_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    """Create an engine with hushgate's connection settings for the URL's backend.

    ``hide_parameters``: SQLAlchemy otherwise puts bound values (e-mail addresses, names) in
    the text of database errors and in ``echo`` logs; hushgate never lets them reach a log."""
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("database.url is not a valid database URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            files.private_database(Path(parsed.database))
        _echo_to_stderr(echo)
        engine = create_engine(url, hide_parameters=True,
                               connect_args={"timeout": 30}, pool_size=pool_size,
                               max_overflow=pool_size)
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        _echo_to_stderr(echo)
        return create_engine(url, hide_parameters=True, pool_size=pool_size,
                             max_overflow=pool_size, pool_pre_ping=True, pool_recycle=1800)
    raise ConfigError(f"database.url: unsupported backend {backend!r} (use sqlite or postgresql)")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so we can emit BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """Owns one engine and its session factories.

    With ``head_file`` (the head file and a way to get the audit key), every commit that
    recorded audit events appends the new chain head to the head file once it is durable,
    and the audit service folds the file's last head into the signed audit state."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False,
                 head_file: tuple[Path, Callable[[], bytes]] | None = None) -> None:
        self.url = normalize_url(url)
        self.engine = create_db_engine(self.url, pool_size=pool_size, echo=echo)
        self.dialect = self.engine.dialect.name
        info = {audit_head.SESSION_PATH: head_file[0]} if head_file else {}
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, info=info)
        reader = self.engine.execution_options(sqlite_begin="DEFERRED")
        self._readers = sessionmaker(reader, expire_on_commit=False)
        if head_file is not None:
            _anchor_after_commit(self._sessions, *head_file)

    @classmethod
    def from_config(cls, config: Any) -> Database:
        """The configured database; refuses to run with a lost audit key (see
        ``check_audit_key``)."""
        config.secure_files()
        db = config.raw["database"]
        database = cls(config.database_url, pool_size=db["pool_size"], echo=db["echo"],
                       head_file=(config.audit_head_path(), config.audit_hmac_key))
        try:
            check_audit_key(database, config)
        except BaseException:
            database.dispose()
            raise
        return database

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Write-session factory (SQLite: BEGIN IMMEDIATE)."""
        return self._sessions

    @property
    def readers(self) -> sessionmaker[Session]:
        """Read-session factory (SQLite: deferred BEGIN)."""
        return self._readers

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write unit of work: commits on success, rolls back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read_transaction(self) -> Iterator[Session]:
        """A read-only unit of work (never commits)."""
        with self._readers() as session:
            try:
                yield session
            finally:
                session.rollback()

    def dispose(self) -> None:
        self.engine.dispose()


def _anchor_after_commit(factory: sessionmaker[Session], path: Path,
                         key: Callable[[], bytes]) -> None:
    @event.listens_for(factory, "before_commit")
    def _head(session: Session) -> None:
        if session.info.pop(audit_head.SESSION_PENDING, False):
            row = session.execute(select(AuditState.last_seq, AuditState.last_hash)
                                  .where(AuditState.id == 1)).one()
            session.info["hushgate_audit_head_write"] = (int(row.last_seq), str(row.last_hash))

    @event.listens_for(factory, "after_commit")
    def _write(session: Session) -> None:
        head = session.info.pop("hushgate_audit_head_write", None)
        if head is not None:
            audit_head.append_committed(path, key(), *head)

    @event.listens_for(factory, "after_rollback")
    def _forget(session: Session) -> None:
        session.info.pop(audit_head.SESSION_PENDING, None)
        session.info.pop("hushgate_audit_head_write", None)


def check_audit_key(db: Database, config: Any) -> None:
    """Refuse to start when the audit key would have to be generated although the database
    already holds an audit chain: a new key would make the whole history unverifiable, and
    it would hide that the old key was lost. The key is never regenerated."""
    path = config.audit_key_would_be_generated()
    if path is None:
        return
    try:
        with db.read_transaction() as session:
            events = session.scalar(select(AuditState.last_seq).where(AuditState.id == 1))
    except (DBAPIError, SQLAlchemyError):
        return  # no schema yet (before `hushgate init`) or unreachable: nothing to protect
    if events:
        raise ConfigError(f"the audit key file {path} is missing but the database holds "
                          f"an audit chain of {events} events: restore the key from your "
                          "backup (hushgate never generates a new one over an existing chain)")


def database_url_from_env() -> str | None:
    return os.environ.get("HUSHGATE_DATABASE_URL")

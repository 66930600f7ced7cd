"""Engine and session lifecycle for SQLite (embedded default) and PostgreSQL.

Services take a ``Session`` and ``flush()``; callers own the transaction through
``Database.transaction()`` (commit on success, rollback on any exception, so a refused
request never leaves a half-written row).

On SQLite every write transaction starts with ``BEGIN IMMEDIATE``: the write lock is taken
up front, so read-then-write sequences (audit chain, idempotency checks) can never act on a
stale snapshot; ``read_transaction()`` uses a deferred ``BEGIN`` so readers don't queue.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from control.core.errors import ConfigError


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` URLs and use the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


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
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, hide_parameters=True,
                               connect_args={"timeout": 30}, pool_size=pool_size,
                               max_overflow=pool_size)
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        return create_engine(url, echo=echo, hide_parameters=True, pool_size=pool_size,
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
    """Owns one engine and its session factories."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.engine = create_db_engine(self.url, pool_size=pool_size, echo=echo)
        self.dialect = self.engine.dialect.name
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        reader = self.engine.execution_options(sqlite_begin="DEFERRED")
        self._readers = sessionmaker(reader, expire_on_commit=False)

    @classmethod
    def from_config(cls, config: Any) -> Database:
        db = config.raw["database"]
        return cls(config.database_url, pool_size=db["pool_size"], echo=db["echo"])

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


def database_url_from_env() -> str | None:
    return os.environ.get("HUSHGATE_DATABASE_URL")

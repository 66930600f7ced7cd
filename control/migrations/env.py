"""Alembic environment: runs against the connection hushgate hands it (see control.core.schema)."""

from __future__ import annotations

from alembic import context

from control.core.base import Base
from control.core import models  # noqa: F401  (registers every table)

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # pragma: no cover - hushgate always passes a connection
        raise RuntimeError("run migrations through `hushgate init`")
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()

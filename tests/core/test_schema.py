"""The migrated schema is the models' schema, on both databases; init is repeatable."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from control.core import schema
from control.core.base import Base
from control.core.db import Database


def test_models_match_migrations(db_url):
    db = Database(db_url, pool_size=1)
    try:
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], diff
        assert schema.is_current(db)
        schema.upgrade(db)  # running it again is harmless
        assert schema.is_current(db)
    finally:
        db.dispose()

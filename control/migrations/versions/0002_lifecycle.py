"""privacy lifecycle: audit immutability triggers and retention support

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

The database itself refuses to rewrite history:

- ``audit_events``: every UPDATE is refused; a DELETE is refused unless the event is covered by
  the signed purge checkpoint (``seq <= audit_state.checkpoint_seq``) AND is older than the
  audit retention window in force; TRUNCATE is refused (PostgreSQL; SQLite has no TRUNCATE and
  disables its truncate optimisation when a DELETE trigger exists).
- ``audit_retention_windows`` (the window the triggers read) is insert-only, and a row that
  shortens the window must take effect no sooner than the current window from now. So plain
  SQL can never make an event deletable before it would have been under the window in force
  when the statement ran. Lengthening takes effect at once.

Threat model: this stops an application bug, SQL injection or a person with ordinary read-write
SQL access. The owner of the tables (or a superuser, or anyone who can write the SQLite file)
can drop triggers; that is what the HMAC chain, the signed checkpoint and the append-only head
file outside the database (``hushgate audit head``) are for.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_AUDIT_DAYS = 90  # the policy's default; the retention job records the configured one
CLOCK_TOLERANCE_DAYS = "(5.0 / 1440.0)"  # 5 minutes of skew between application and database

_SQLITE_WINDOW = ("(SELECT w.days FROM audit_retention_windows w "
                  "WHERE julianday(w.effective_at) <= julianday('now') "
                  "ORDER BY julianday(w.created_at) DESC, w.id DESC LIMIT 1)")

SQLITE_UP = [
    """CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'audit events are immutable'); END""",
    f"""CREATE TRIGGER audit_events_guard_delete BEFORE DELETE ON audit_events
       WHEN OLD.seq > COALESCE((SELECT checkpoint_seq FROM audit_state WHERE id = 1), 0)
         OR julianday(OLD.created_at) >= julianday('now') - COALESCE({_SQLITE_WINDOW}, 1000000)
       BEGIN SELECT RAISE(ABORT,
         'audit events inside the retention window or after the checkpoint cannot be deleted');
       END""",  # noqa: S608 - constant SQL, no input
    """CREATE TRIGGER audit_retention_windows_no_update
       BEFORE UPDATE ON audit_retention_windows
       BEGIN SELECT RAISE(ABORT, 'audit retention windows are insert-only'); END""",
    """CREATE TRIGGER audit_retention_windows_no_delete
       BEFORE DELETE ON audit_retention_windows
       BEGIN SELECT RAISE(ABORT, 'audit retention windows are insert-only'); END""",
    f"""CREATE TRIGGER audit_retention_windows_guard_insert
       BEFORE INSERT ON audit_retention_windows
       WHEN abs(julianday(NEW.created_at) - julianday('now')) > {CLOCK_TOLERANCE_DAYS}
         OR julianday(NEW.effective_at) < julianday('now') - {CLOCK_TOLERANCE_DAYS}
            + CASE WHEN NEW.days < COALESCE({_SQLITE_WINDOW}, 0)
                   THEN {_SQLITE_WINDOW} ELSE 0 END
       BEGIN SELECT RAISE(ABORT,
         'a shorter audit retention window may only take effect after the current window');
       END""",
]

SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS audit_events_no_update",
    "DROP TRIGGER IF EXISTS audit_events_guard_delete",
    "DROP TRIGGER IF EXISTS audit_retention_windows_no_update",
    "DROP TRIGGER IF EXISTS audit_retention_windows_no_delete",
    "DROP TRIGGER IF EXISTS audit_retention_windows_guard_insert",
]

PG_UP = [
    """CREATE FUNCTION hushgate_audit_window(at timestamptz) RETURNS integer
       LANGUAGE sql STABLE AS $$
         SELECT days FROM audit_retention_windows WHERE effective_at <= at
         ORDER BY created_at DESC, id DESC LIMIT 1
       $$""",
    """CREATE FUNCTION hushgate_audit_events_guard() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN
         IF TG_OP = 'DELETE' THEN
           IF OLD.seq <= COALESCE((SELECT checkpoint_seq FROM audit_state WHERE id = 1), 0)
              AND OLD.created_at < now()
                  - make_interval(days => COALESCE(hushgate_audit_window(now()), 1000000)) THEN
             RETURN OLD;
           END IF;
           RAISE EXCEPTION 'audit events inside the retention window or after the checkpoint '
                           'cannot be deleted' USING ERRCODE = 'insufficient_privilege';
         END IF;
         RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
           MESSAGE = 'audit events are immutable (' || TG_OP || ' refused)';
       END $$""",
    """CREATE FUNCTION hushgate_audit_windows_guard() RETURNS trigger
       LANGUAGE plpgsql AS $$
       DECLARE
         current_days integer := hushgate_audit_window(now());
         earliest timestamptz := now() - interval '5 minutes';
       BEGIN
         IF TG_OP <> 'INSERT' THEN
           RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
             MESSAGE = 'audit retention windows are insert-only (' || TG_OP || ' refused)';
         END IF;
         IF NEW.days < COALESCE(current_days, 0) THEN
           earliest := earliest + make_interval(days => current_days);
         END IF;
         IF abs(extract(epoch FROM NEW.created_at - now())) > 300
            OR NEW.effective_at < earliest THEN
           RAISE EXCEPTION 'a shorter audit retention window may only take effect after the '
                           'current window' USING ERRCODE = 'insufficient_privilege';
         END IF;
         RETURN NEW;
       END $$""",
    """CREATE TRIGGER audit_events_guard BEFORE UPDATE OR DELETE ON audit_events
       FOR EACH ROW EXECUTE FUNCTION hushgate_audit_events_guard()""",
    """CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
       FOR EACH STATEMENT EXECUTE FUNCTION hushgate_audit_events_guard()""",
    """CREATE TRIGGER audit_retention_windows_guard
       BEFORE INSERT OR UPDATE OR DELETE ON audit_retention_windows
       FOR EACH ROW EXECUTE FUNCTION hushgate_audit_windows_guard()""",
    """CREATE TRIGGER audit_retention_windows_no_truncate BEFORE TRUNCATE
       ON audit_retention_windows
       FOR EACH STATEMENT EXECUTE FUNCTION hushgate_audit_windows_guard()""",
]

PG_DOWN = [
    "DROP TRIGGER IF EXISTS audit_retention_windows_no_truncate ON audit_retention_windows",
    "DROP TRIGGER IF EXISTS audit_retention_windows_guard ON audit_retention_windows",
    "DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events",
    "DROP TRIGGER IF EXISTS audit_events_guard ON audit_events",
    "DROP FUNCTION IF EXISTS hushgate_audit_windows_guard()",
    "DROP FUNCTION IF EXISTS hushgate_audit_events_guard()",
    "DROP FUNCTION IF EXISTS hushgate_audit_window(timestamptz)",
]


def upgrade() -> None:
    op.create_table(
        "audit_retention_windows",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("days >= 1", name=op.f("ck_audit_retention_windows_days")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_retention_windows")),
    )
    windows = sa.table("audit_retention_windows", sa.column("days", sa.Integer),
                       sa.column("effective_at", sa.DateTime(timezone=True)),
                       sa.column("created_at", sa.DateTime(timezone=True)))
    # SQLite stores naive UTC text (what UTCDateTime writes); PostgreSQL takes aware values.
    sqlite = op.get_bind().dialect.name == "sqlite"
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    if sqlite:
        epoch, now = epoch.replace(tzinfo=None), now.replace(tzinfo=None)
    op.bulk_insert(windows, [{"days": DEFAULT_AUDIT_DAYS, "effective_at": epoch,
                              "created_at": now}])
    bind = op.get_bind()
    for statement in SQLITE_UP if sqlite else PG_UP:
        bind.exec_driver_sql(statement)  # raw: no bind-parameter or '%' processing


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in SQLITE_DOWN if sqlite else PG_DOWN:
        op.get_bind().exec_driver_sql(statement)
    op.drop_table("audit_retention_windows")

"""trust: signed audit state, global webhook idempotency, sign-in throttling

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

- ``audit_state`` gains ``anchored_seq`` (the highest head known to be in the head file) and
  ``state_sig`` (an HMAC over the whole row, written by the audit service; an unsigned row
  is adopted by the next append).
- The database keeps the chain append-only with plain SQL too: an event may only be inserted
  as the next one (``seq`` = the state's ``last_seq``, never an existing ``seq``/``event_id``:
  this is what SQLite's ``INSERT OR REPLACE`` would otherwise use to swap a recent event for
  a backdated one), and the state row only moves forward (no lower ``last_seq``,
  ``checkpoint_seq`` or ``anchored_seq``, no removed signature, no DELETE).
- ``payment_events``: every payment-processor event by its own id, so one event can credit
  at most one account once, and a refused payment is kept for the operator.

As in 0002, the owner of the tables can drop triggers; the signed state, the head file and
the external anchors are what detect that.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_UP = [
    """CREATE TRIGGER audit_events_guard_insert BEFORE INSERT ON audit_events
       WHEN NEW.seq <> (SELECT last_seq FROM audit_state WHERE id = 1)
         OR EXISTS (SELECT 1 FROM audit_events e
                    WHERE e.seq = NEW.seq OR e.event_id = NEW.event_id)
       BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
    """CREATE TRIGGER audit_state_guard_update BEFORE UPDATE ON audit_state
       WHEN NEW.id <> OLD.id OR NEW.last_seq < OLD.last_seq
         OR NEW.checkpoint_seq < OLD.checkpoint_seq OR NEW.anchored_seq < OLD.anchored_seq
         OR (OLD.state_sig IS NOT NULL AND NEW.state_sig IS NULL)
       BEGIN SELECT RAISE(ABORT, 'the audit state only moves forward'); END""",
    """CREATE TRIGGER audit_state_no_delete BEFORE DELETE ON audit_state
       BEGIN SELECT RAISE(ABORT, 'the audit state only moves forward'); END""",
]

SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS audit_events_guard_insert",
    "DROP TRIGGER IF EXISTS audit_state_guard_update",
    "DROP TRIGGER IF EXISTS audit_state_no_delete",
]

PG_UP = [
    """CREATE FUNCTION hushgate_audit_events_insert_guard() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN
         IF NEW.seq IS DISTINCT FROM (SELECT last_seq FROM audit_state WHERE id = 1) THEN
           RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
             MESSAGE = 'audit events are append-only: only the next event may be inserted';
         END IF;
         RETURN NEW;
       END $$""",
    """CREATE FUNCTION hushgate_audit_state_guard() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN
         IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.last_seq >= OLD.last_seq
            AND NEW.checkpoint_seq >= OLD.checkpoint_seq
            AND NEW.anchored_seq >= OLD.anchored_seq
            AND NOT (OLD.state_sig IS NOT NULL AND NEW.state_sig IS NULL) THEN
           RETURN NEW;
         END IF;
         RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
           MESSAGE = 'the audit state only moves forward (' || TG_OP || ' refused)';
       END $$""",
    """CREATE TRIGGER audit_events_guard_insert BEFORE INSERT ON audit_events
       FOR EACH ROW EXECUTE FUNCTION hushgate_audit_events_insert_guard()""",
    """CREATE TRIGGER audit_state_guard BEFORE UPDATE OR DELETE ON audit_state
       FOR EACH ROW EXECUTE FUNCTION hushgate_audit_state_guard()""",
    """CREATE TRIGGER audit_state_no_truncate BEFORE TRUNCATE ON audit_state
       FOR EACH STATEMENT EXECUTE FUNCTION hushgate_audit_state_guard()""",
]

PG_DOWN = [
    "DROP TRIGGER IF EXISTS audit_state_no_truncate ON audit_state",
    "DROP TRIGGER IF EXISTS audit_state_guard ON audit_state",
    "DROP TRIGGER IF EXISTS audit_events_guard_insert ON audit_events",
    "DROP FUNCTION IF EXISTS hushgate_audit_state_guard()",
    "DROP FUNCTION IF EXISTS hushgate_audit_events_insert_guard()",
]


def upgrade() -> None:
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    with op.batch_alter_table("audit_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("anchored_seq", big, nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("state_sig", sa.String(length=64), nullable=True))
    op.create_table(
        "payment_events",
        sa.Column("event_id", sa.String(length=100), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=True),
        sa.Column("amount", big, nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("outcome IN ('credited','refused')",
                           name=op.f("ck_payment_events_outcome")),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_payment_events")),
    )
    bind = op.get_bind()
    for statement in SQLITE_UP if bind.dialect.name == "sqlite" else PG_UP:
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    bind = op.get_bind()
    for statement in SQLITE_DOWN if bind.dialect.name == "sqlite" else PG_DOWN:
        bind.exec_driver_sql(statement)
    op.drop_table("payment_events")
    # Plain ALTER TABLE (SQLite >= 3.35), not a batch copy: 0002's triggers on audit_events
    # refer to audit_state, and SQLite refuses to rename a copy into its place under them.
    for column in ("state_sig", "anchored_seq"):
        bind.exec_driver_sql(f"ALTER TABLE audit_state DROP COLUMN {column}")

"""self-hosting: password reset and invite tokens, checkout sessions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

``password_tokens`` holds single-use links to set an account holder's password (a reset or an
invite) — only the random id and its limits, never token material (see
``control.core.passwords``). ``checkout_sessions`` records each payment processor checkout
started for a top-up, for reconciliation; the wallet is credited only by the signed webhook.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Money = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "password_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=8), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("purpose IN ('reset','invite')",
                           name=op.f("ck_password_tokens_purpose")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_password_tokens_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_password_tokens")),
    )
    op.create_index(op.f("ix_password_tokens_account_id"), "password_tokens", ["account_id"])
    op.create_index(op.f("ix_password_tokens_expires_at"), "password_tokens", ["expires_at"])
    op.create_table(
        "checkout_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("provider_session_id", sa.String(length=255), nullable=True),
        sa.Column("amount", Money, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_checkout_sessions_amount")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_checkout_sessions_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkout_sessions")),
        sa.UniqueConstraint("provider_session_id",
                            name=op.f("uq_checkout_sessions_provider_session_id")),
    )
    op.create_index(op.f("ix_checkout_sessions_account_id"), "checkout_sessions",
                    ["account_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_checkout_sessions_account_id"), table_name="checkout_sessions")
    op.drop_table("checkout_sessions")
    op.drop_index(op.f("ix_password_tokens_expires_at"), table_name="password_tokens")
    op.drop_index(op.f("ix_password_tokens_account_id"), table_name="password_tokens")
    op.drop_table("password_tokens")

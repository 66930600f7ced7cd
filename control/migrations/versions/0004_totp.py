"""two-factor sign-in (TOTP) for control-plane users

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

``users.totp_secret`` (a plain VARCHAR(64) from 0001 that no code ever wrote) is replaced by
``totp_secret_enc``, which holds the secret only encrypted (see ``control.core.totp``), plus
``totp_enabled_at`` (NULL while an enrollment awaits its first code) and ``totp_last_step``
(the last accepted time step, so a code can never be used twice).

Plain ADD/DROP COLUMN on both databases (SQLite >= 3.35 drops columns in place), so the
``users`` table, which ``admin_tokens`` references, is never copied and recreated.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("users", sa.Column("totp_secret_enc", sa.String(length=200), nullable=True))
    op.add_column("users", sa.Column("totp_enabled_at", sa.DateTime(timezone=True),
                                     nullable=True))
    op.add_column("users", sa.Column("totp_last_step", BigId, nullable=True))
    op.drop_column("users", "totp_secret")


def downgrade() -> None:
    op.add_column("users", sa.Column("totp_secret", sa.String(length=64), nullable=True))
    op.drop_column("users", "totp_last_step")
    op.drop_column("users", "totp_enabled_at")
    op.drop_column("users", "totp_secret_enc")

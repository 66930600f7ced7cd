"""trust: signed audit state, global webhook idempotency, sign-in throttling

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Placeholder reserved for the trust issue (#11); filled in by that work.
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""covering index for the dashboard's aggregation over request records

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

The dashboard groups a time window of ``request_records`` by bucket, model and latency bin,
summing statuses, tokens and cost. With every column it reads in one index ordered by time,
the window is an index-only range scan instead of one table lookup per record.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ["time", "model", "latency_ms", "status", "input_tokens", "output_tokens",
           "cached_tokens", "cost"]


def upgrade() -> None:
    op.create_index("ix_request_records_dashboard", "request_records", COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_request_records_dashboard", table_name="request_records")

"""money path: proxy registry, heartbeats, leases, debt

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

- ``proxy_instances``: each proxy process registers and heartbeats; its holds and leases are
  released only once its heartbeat stops (``control.core.instances``).
- ``holds.instance_id``: the process a hold belongs to.
- ``balance_leases``: per-process escrow of part of an account's available balance
  (``control.core.leases``).
- ``request_records.debt``: the charge went beyond what was reserved and available.
- The CHECKs ``wallets.available_nonneg`` and ``api_keys.budget`` go: a provider-reported
  charge beyond the hold is charged in full (recorded debt), never capped. Reserve and lease
  grants stay conditional on the available balance, so nothing is *reserved* beyond it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigMoney = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "proxy_instances",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('live','stopped','expired')",
                           name=op.f("ck_proxy_instances_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_proxy_instances")),
    )
    op.create_index(op.f("ix_proxy_instances_heartbeat_at"), "proxy_instances",
                    ["heartbeat_at"])
    op.create_table(
        "balance_leases",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("amount", BigMoney, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_balance_leases_amount")),
        sa.CheckConstraint("status IN ('open','closed')", name=op.f("ck_balance_leases_status")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name=op.f("fk_balance_leases_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_balance_leases")),
    )
    op.create_index(op.f("ix_balance_leases_account_id"), "balance_leases", ["account_id"])
    op.create_index(op.f("ix_balance_leases_instance_id"), "balance_leases", ["instance_id"])
    with op.batch_alter_table("holds") as batch_op:
        batch_op.add_column(sa.Column("instance_id", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_holds_instance_id"), ["instance_id"])
    with op.batch_alter_table("request_records") as batch_op:
        batch_op.add_column(sa.Column("debt", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    with op.batch_alter_table("wallets") as batch_op:
        batch_op.drop_constraint(op.f("ck_wallets_available_nonneg"), type_="check")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_constraint(op.f("ck_api_keys_budget"), type_="check")


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.create_check_constraint("budget",
                                         "budget IS NULL OR spent + budget_held <= budget")
    with op.batch_alter_table("wallets") as batch_op:
        batch_op.create_check_constraint("available_nonneg", "balance - held >= 0")
    with op.batch_alter_table("request_records") as batch_op:
        batch_op.drop_column("debt")
    with op.batch_alter_table("holds") as batch_op:
        batch_op.drop_index(batch_op.f("ix_holds_instance_id"))
        batch_op.drop_column("instance_id")
    op.drop_table("balance_leases")
    op.drop_table("proxy_instances")

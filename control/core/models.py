"""Every table hushgate keeps. The schema itself is created only by Alembic migrations.

Nothing here holds request or response content: the only per-request table is
``request_records``, whose columns are exactly the fields of
``schemas/request-record.schema.json``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from control.core.base import Base, BigId, Money, UTCDateTime, created_at, money, uuid_pk

# -- people ---------------------------------------------------------------------------------


class Account(Base):
    """An API customer. Personal fields are nulled at erasure; the row stays as a surrogate."""

    __tablename__ = "accounts"

    id: Mapped[uuid_pk]
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    company: Mapped[str | None] = mapped_column(String(200))
    # active | disabled | deleted | erased
    status: Mapped[str] = mapped_column(String(16), default="active")
    adult_attested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    password_hash: Mapped[str | None] = mapped_column(String(100))
    opt_out_non_essential: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("status IN ('active','disabled','deleted','erased')", name="status"),
    )


class User(Base):
    """An operator of the control plane (admin or read-only viewer)."""

    __tablename__ = "users"

    id: Mapped[uuid_pk]
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16), default="admin")  # admin|viewer
    # Two-factor sign-in (control.core.totp). The RFC 6238 secret is stored only encrypted
    # (AES-256-GCM under a key derived from the session secret); a secret with no
    # ``totp_enabled_at`` is an enrollment that was started but not confirmed yet.
    totp_secret_enc: Mapped[str | None] = mapped_column(String(200))
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The last accepted time step: a code for this step or an earlier one is refused (replay).
    totp_last_step: Mapped[int | None] = mapped_column(BigId)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created_at]
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (CheckConstraint("role IN ('admin','viewer')", name="role"),)


# -- credentials ----------------------------------------------------------------------------


class ApiKey(Base):
    """An account's gateway key. Only a bcrypt hash of the secret is stored."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(100))
    display_prefix: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str | None] = mapped_column(String(100))  # nulled at erasure
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    budget: Mapped[int | None] = mapped_column(Money)
    spent: Mapped[money]
    budget_held: Mapped[money]
    status: Mapped[str] = mapped_column(String(16), default="active")  # active|revoked
    created_at: Mapped[created_at]
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoke_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # rotation grace period
    rotated_from: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        CheckConstraint("status IN ('active','revoked')", name="status"),
        # No CHECK on spent <= budget: a provider-reported overage is charged in full and
        # counted here; reserve then refuses the key (``wallet.reserve``).
        CheckConstraint("budget_held >= 0", name="budget_held"),
    )


class AdminToken(Base):
    """A JSON-API token of a control-plane user (same key format, its own prefix)."""

    __tablename__ = "admin_tokens"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(100))
    display_prefix: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(8), default="read")  # read|write
    created_at: Mapped[created_at]
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (CheckConstraint("scope IN ('read','write')", name="scope"),)


class WebSession(Base):
    """A server-side, revocable control-plane session. ``id`` is a SHA-256 of the cookie."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal_kind: Mapped[str] = mapped_column(String(8))  # user|account
    principal_id: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[created_at]
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LoginFailure(Base):
    """Failed sign-ins, for throttling. ``subject`` is an HMAC of the username, not the name."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[created_at]


# -- money ----------------------------------------------------------------------------------


class Wallet(Base):
    """Balance and what is set aside. ``balance == sum(ledger)``.

    ``held`` is the sum of open holds and open balance leases; reserve and lease grants are
    conditional on ``balance - held`` covering them, so they never overdraw. Only a charge
    the provider reported beyond what was reserved and available takes ``balance - held``
    below zero: that is recorded debt (the record is flagged), and reserve refuses the
    account until it is topped up.
    """

    __tablename__ = "wallets"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    balance: Mapped[money]
    held: Mapped[money]
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (CheckConstraint("held >= 0", name="held_nonneg"),)


class LedgerEntry(Base):
    """An append-only wallet movement. Kept forever (financial compliance)."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # topup|usage|refund|adjustment
    amount: Mapped[int] = mapped_column(Money)  # signed: credits > 0, debits < 0
    balance_after: Mapped[int] = mapped_column(Money)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    params_hash: Mapped[str | None] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(100))  # request id, event id, hold id
    reason: Mapped[str | None] = mapped_column(String(500))
    actor: Mapped[str | None] = mapped_column(String(100))
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created_at]

    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key", name="uq_ledger_idempotency"),
        CheckConstraint("kind IN ('topup','usage','refund','adjustment')", name="kind"),
    )


class Hold(Base):
    """Funds reserved for one in-flight request.

    A hold with an ``instance_id`` belongs to a live proxy process (``proxy_instances``) and
    is released only when that process's heartbeat stops; one without (taken by callers that
    don't register) is released by the sweep once ``expires_at`` passes."""

    __tablename__ = "holds"

    id: Mapped[uuid_pk]
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_id: Mapped[str | None] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|settled|released
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[created_at]
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    instance_id: Mapped[str | None] = mapped_column(String(32), index=True)

    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount"),
        CheckConstraint("status IN ('open','settled','released')", name="status"),
    )


class ProxyInstance(Base):
    """A running proxy process. Its holds and leases live as long as its heartbeat does."""

    __tablename__ = "proxy_instances"

    id: Mapped[uuid_pk]
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    status: Mapped[str] = mapped_column(String(16), default="live")  # live|stopped|expired
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("status IN ('live','stopped','expired')", name="status"),
    )


class BalanceLease(Base):
    """Part of an account's available balance set aside for one proxy process (escrow).

    ``amount`` is what the lease still holds in ``wallets.held``; the process spends inside
    it in memory and each charge it commits consumes from it."""

    __tablename__ = "balance_leases"

    id: Mapped[uuid_pk]
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    instance_id: Mapped[str] = mapped_column(String(32), index=True)
    amount: Mapped[int] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|closed
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount"),
        CheckConstraint("status IN ('open','closed')", name="status"),
    )


# -- per-request metadata -------------------------------------------------------------------


class RequestRecord(Base):
    """One request's metadata: exactly the fields of ``request-record.schema.json``."""

    __tablename__ = "request_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    account_id: Mapped[str | None] = mapped_column(String(32))
    key_id: Mapped[str | None] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    provider: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(64))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    cost: Mapped[money]
    # The charge exceeded what was reserved and available: the account owes the difference.
    debt: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    ttfb_ms: Mapped[int | None] = mapped_column(Integer)
    upstream_ms: Mapped[int | None] = mapped_column(Integer)
    request_bytes: Mapped[int] = mapped_column(BigId, default=0)
    response_bytes: Mapped[int] = mapped_column(BigId, default=0)
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_request_records_account_time", "account_id", "time"),
        # Covers the dashboard's aggregation (control.core.stats.dashboard): a window is then
        # an index-only range scan, never a lookup of each row in the table.
        Index("ix_request_records_dashboard", "time", "model", "latency_ms", "status",
              "input_tokens", "output_tokens", "cached_tokens", "cost"),
    )


# -- audit ----------------------------------------------------------------------------------


class AuditEvent(Base):
    """An administrative action, chained by HMAC-SHA256 to its predecessor."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[created_at]
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditState(Base):
    """The single row that serializes audit appends: the chain head, the purge checkpoint,
    the highest head known to be in the head file, and an HMAC over all of them."""

    __tablename__ = "audit_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigId, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    checkpoint_seq: Mapped[int] = mapped_column(BigId, default=0)
    checkpoint_hash: Mapped[str | None] = mapped_column(String(64))
    checkpoint_sig: Mapped[str | None] = mapped_column(String(64))
    anchored_seq: Mapped[int] = mapped_column(BigId, default=0)
    state_sig: Mapped[str | None] = mapped_column(String(64))


class PaymentEvent(Base):
    """Each payment-processor event received, by its own id (idempotent across accounts):
    credited once, or refused (deleted/erased account) and kept for the operator."""

    __tablename__ = "payment_events"

    event_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(Money)
    outcome: Mapped[str] = mapped_column(String(16))  # credited|refused
    reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[created_at]

    __table_args__ = (CheckConstraint("outcome IN ('credited','refused')", name="outcome"),)


# -- infrastructure -------------------------------------------------------------------------


class ChangeCounter(Base):
    """Monotonic counters other processes poll (e.g. ``keys``: any key or account change)."""

    __tablename__ = "change_counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigId, default=0)


class Notification(Base):
    """Outbox of messages to account holders. Holds a kind and safe parameters, no content."""

    __tablename__ = "notifications"

    id: Mapped[uuid_pk]
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    essential: Mapped[bool] = mapped_column(Boolean, default=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|sent|skipped|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[created_at]
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PolicyVersion(Base):
    """Each published version of the privacy policy text (hash + date, not the text)."""

    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    text_hash: Mapped[str] = mapped_column(String(64))
    last_updated: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[created_at]
    notes: Mapped[str | None] = mapped_column(Text)


# -- lifecycle ------------------------------------------------------------------------------


class AuditRetentionWindow(Base):
    """The audit retention window the database itself enforces (see migration 0002).

    Insert-only: triggers refuse UPDATE and DELETE, and refuse a row that shortens the window
    unless it takes effect no sooner than the current window from now, so plain SQL can never
    make a recent audit event deletable. The window in force at time T is the ``days`` of the
    most recently inserted row whose ``effective_at <= T``.
    """

    __tablename__ = "audit_retention_windows"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    days: Mapped[int] = mapped_column(Integer)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[created_at]

    __table_args__ = (CheckConstraint("days >= 1", name="days"),)


# -- self-hosting (password reset and invite tokens, checkout sessions) ---------------------


class PasswordToken(Base):
    """A single-use link to set an account holder's password (a reset or an invite).

    No token material is stored: the link is ``<id>.<mac>`` where the MAC is an HMAC of the
    id under the session secret (``control.core.passwords``), which never enters the database.
    The row only says what the id may do, for whom, until when, and whether it was used.
    """

    __tablename__ = "password_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(8))  # reset|invite
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[created_at]
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (CheckConstraint("purpose IN ('reset','invite')", name="purpose"),)


class CheckoutSession(Base):
    """A payment processor checkout started for a top-up (the wallet is credited only by the
    processor's signed webhook; this row is the reconciliation trail)."""

    __tablename__ = "checkout_sessions"

    id: Mapped[uuid_pk]  # the hushgate reference, also in the processor's metadata
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    provider_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    amount: Mapped[int] = mapped_column(Money)  # hushgate minor units
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[created_at]

    __table_args__ = (CheckConstraint("amount > 0", name="amount"),)

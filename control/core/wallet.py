"""Prepaid wallets: an append-only ledger, holds, and reserve-then-settle.

Invariants, kept by conditional UPDATEs:
- ``wallet.balance == sum(ledger_entries.amount)`` for the account;
- nothing is *reserved* beyond the available balance: a hold or a lease
  (``control.core.leases``) is granted only if ``balance - held`` covers it, under any
  concurrency, and a key's holds only if its budget covers them.

``reserve`` holds the worst-case cost before a request is forwarded; ``settle`` charges the
provider-reported cost **in full** and frees the rest of the hold; ``release`` frees all of
it. A charge beyond the hold and the available balance is never capped: the account goes
into debt by exactly the overage (``balance - held < 0``; the record is flagged, see
``control.core.outcomes``) and reserve refuses it until it is topped up
(:func:`accounts_in_debt` lists them). The batched, exactly-once form the proxy uses is
``control.core.outcomes.settle_outcomes``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from control.core import notify
from control.core.audit import SYSTEM, Action, record
from control.core.base import Money, UTCDateTime, new_id, utcnow
from control.core.config import Config
from control.core.context import Ctx
from control.core.errors import (
    BudgetExceeded,
    HushgateError,
    IdempotencyConflict,
    InsufficientFunds,
    NotFound,
    ValidationError,
)
from control.core.models import Account, ApiKey, BalanceLease, Hold, LedgerEntry, Wallet
from control.core.money import format_amount

log = logging.getLogger("hushgate.wallet")


@dataclass(frozen=True)
class Balance:
    """``held`` counts open per-request holds and open balance leases (the part a running
    proxy has set aside to admit requests without a database round trip); ``leased`` is that
    second part, given back when the account is idle, at shutdown, or by the sweep."""

    balance: int
    held: int
    leased: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.held


def ensure_wallet(session: Session, account_id: str) -> Wallet:
    wallet = session.get(Wallet, account_id)
    if wallet is None:
        wallet = Wallet(account_id=account_id, balance=0, held=0, updated_at=utcnow())
        session.add(wallet)
        session.flush()
    return wallet


def get_balance(session: Session, account_id: str) -> Balance:
    row = session.execute(select(Wallet.balance, Wallet.held)
                          .where(Wallet.account_id == account_id)).first()
    if row is None:
        if session.get(Account, account_id) is None:
            raise NotFound(f"unknown account {account_id}")
        return Balance(0, 0)
    leased = 0
    if row.held:
        leased = session.execute(
            select(func.coalesce(func.sum(BalanceLease.amount), 0))
            .where(BalanceLease.account_id == account_id, BalanceLease.status == "open")
        ).scalar_one()
    return Balance(row.balance, row.held, int(leased))


def _params_hash(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _credit(ctx: Ctx, account_id: str, amount: int, kind: str, *, idempotency_key: str | None,
            reference: str | None, reason: str | None) -> tuple[LedgerEntry, bool]:
    """Apply a signed amount with an optional idempotency key. Returns (entry, created)."""
    session = ctx.session
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound(f"unknown account {account_id}")
    if account.status == "erased":
        raise ValidationError(f"account {account_id} has been erased", "account")
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
        raise ValidationError("idempotency key must be 1 to 200 characters", "idempotency_key")
    phash = _params_hash(kind, amount, reference, reason)
    ensure_wallet(session, account_id)
    # Lock the wallet row first: concurrent calls with the same idempotency key queue here
    # and the later ones then see the first one's committed entry.
    session.execute(select(Wallet.account_id).where(Wallet.account_id == account_id)
                    .with_for_update())
    if idempotency_key:
        existing = session.scalar(select(LedgerEntry).where(
            LedgerEntry.account_id == account_id, LedgerEntry.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.params_hash != phash:
                raise IdempotencyConflict(
                    "idempotency key was already used with different parameters")
            return existing, False
    cond = [Wallet.account_id == account_id]
    if amount < 0:
        cond.append(Wallet.balance - Wallet.held + amount >= 0)
    new_balance = session.execute(
        update(Wallet).where(*cond)
        .values(balance=Wallet.balance + amount, updated_at=utcnow())
        .returning(Wallet.balance)).scalar()
    if new_balance is None:
        raise InsufficientFunds("the adjustment would make the available balance negative")
    if new_balance > ctx.config.wallet["max_amount"]:
        raise ValidationError("the balance would exceed the maximum amount", "amount")
    entry = LedgerEntry(account_id=account_id, kind=kind, amount=amount,
                        balance_after=new_balance, idempotency_key=idempotency_key,
                        params_hash=phash, reference=reference, reason=reason,
                        actor=str(ctx.actor))
    try:
        with session.begin_nested():
            session.add(entry)
    except IntegrityError:
        # A concurrent request with the same idempotency key won the race (PostgreSQL).
        raise IdempotencyConflict("a request with this idempotency key is in progress") from None
    return entry, True


def topup(ctx: Ctx, account_id: str, amount: int, *, idempotency_key: str | None = None,
          reference: str | None = None, payment: bool = False) -> tuple[LedgerEntry, bool]:
    """Credit the wallet. The same idempotency key with the same parameters returns the first
    entry and credits once; with different parameters it raises IdempotencyConflict."""
    if amount <= 0:
        raise ValidationError("top-up amount must be positive", "amount")
    if amount > ctx.config.wallet["max_amount"]:
        raise ValidationError("top-up amount is too large", "amount")
    entry, created = _credit(ctx, account_id, amount, "topup", idempotency_key=idempotency_key,
                             reference=reference, reason=None)
    if created:
        action = Action.WALLET_PAYMENT_RECEIVED if payment else Action.WALLET_TOPPED_UP
        ctx.audit(action, "account", account_id, amount=amount, entry_id=entry.id,
                  reference=reference)
    return entry, created


def adjust(ctx: Ctx, account_id: str, amount: int, *, reason: str,
           idempotency_key: str | None = None) -> tuple[LedgerEntry, bool]:
    """An administrative correction (signed) with a mandatory reason."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("an adjustment needs a reason", "reason")
    if len(reason) > 500:
        raise ValidationError("reason is longer than 500 characters", "reason")
    if amount == 0:
        raise ValidationError("adjustment amount must not be zero", "amount")
    if abs(amount) > ctx.config.wallet["max_amount"]:
        raise ValidationError("adjustment amount is too large", "amount")
    entry, created = _credit(ctx, account_id, amount, "adjustment",
                             idempotency_key=idempotency_key, reference=None, reason=reason)
    if created:
        ctx.audit(Action.WALLET_ADJUSTED, "account", account_id, amount=amount,
                  entry_id=entry.id, reason=reason)
    return entry, created


def history(session: Session, account_id: str, *, limit: int = 100,
            before_id: int | None = None) -> list[LedgerEntry]:
    """Ledger entries, newest first, keyset-paginated."""
    q = (select(LedgerEntry).where(LedgerEntry.account_id == account_id)
         .order_by(LedgerEntry.id.desc()).limit(limit))
    if before_id is not None:
        q = q.where(LedgerEntry.id < before_id)
    return list(session.scalars(q))


def ledger_sum(session: Session, account_id: str) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0))
                              .where(LedgerEntry.account_id == account_id)) or 0)


@dataclass(frozen=True)
class Debt:
    account_id: str
    owed: int  # minor units the account owes: -(balance - held)
    balance: int
    held: int


def accounts_in_debt(session: Session, *, limit: int = 1000) -> list[Debt]:
    """Accounts whose charges went beyond what they had (``balance - held < 0``), most owed
    first: the operator's list (dashboard, API). Reserve refuses them until topped up."""
    rows = session.execute(
        select(Wallet.account_id, Wallet.balance, Wallet.held)
        .where(Wallet.balance - Wallet.held < 0)
        .order_by((Wallet.balance - Wallet.held).asc(), Wallet.account_id).limit(limit))
    return [Debt(r.account_id, r.held - r.balance, r.balance, r.held) for r in rows]


def entry_dict(e: LedgerEntry) -> dict[str, object]:
    return {"id": e.id, "kind": e.kind, "amount": e.amount, "balance_after": e.balance_after,
            "reference": e.reference, "reason": e.reason, "actor": e.actor,
            "estimated": e.estimated, "created_at": e.created_at.isoformat()}


# -- the proxy's reserve / settle / release -------------------------------------------------


# The hot path (every proxied request reserves, then settles or releases) uses Core
# statements built once, with bound parameters: building ORM update expressions per call and
# the ORM's bulk-update bookkeeping cost more CPU than the SQL itself. In-session objects of
# the rows these statements change are expired (:func:`_expire`), so a caller that loaded
# them earlier in the same session never reads stale money.
_W, _K, _H, _L = (Wallet.__table__, ApiKey.__table__, Hold.__table__,  # type: ignore[attr-defined]
                  LedgerEntry.__table__)  # type: ignore[attr-defined]
_p_acct = bindparam("p_acct", type_=String())
_p_key = bindparam("p_key", type_=String())
_p_hold = bindparam("p_hold", type_=String())
_p_amount = bindparam("p_amount", type_=Money)
_p_charge = bindparam("p_charge", type_=Money)
_p_now = bindparam("p_now", type_=UTCDateTime())
_p_status = bindparam("p_status", type_=String())

_RESERVE_WALLET = (update(_W).where(_W.c.account_id == _p_acct,
                                    _W.c.balance - _W.c.held >= _p_amount)
                   .values(held=_W.c.held + _p_amount, updated_at=_p_now)
                   .returning(_W.c.account_id))
_RESERVE_KEY = (update(_K).where(_K.c.key_id == _p_key,
                                 _K.c.budget.is_(None)
                                 | (_K.c.spent + _K.c.budget_held + _p_amount <= _K.c.budget))
                .values(budget_held=_K.c.budget_held + _p_amount)
                .returning(_K.c.key_id))
_CLOSE_HOLD = (update(_H).where(_H.c.id == _p_hold, _H.c.status == "open")
               .values(status=_p_status, closed_at=_p_now)
               .returning(_H.c.account_id, _H.c.key_id, _H.c.amount, _H.c.request_id))
_CHARGE_WALLET = (update(_W).where(_W.c.account_id == _p_acct)
                  .values(held=_W.c.held - _p_amount, balance=_W.c.balance - _p_charge,
                          updated_at=_p_now)
                  .returning(_W.c.balance))
_CHARGE_KEY = (update(_K).where(_K.c.key_id == _p_key)
               .values(budget_held=_K.c.budget_held - _p_amount, spent=_K.c.spent + _p_charge))


def _expire(session: Session, account_id: str, key_id: str | None) -> None:
    """Forget in-session copies of the wallet (and key) rows a Core statement changed."""
    expire_rows(session, (account_id,), () if key_id is None else (key_id,))


def expire_rows(session: Session, account_ids: Iterable[str], key_ids: Iterable[str]) -> None:
    """Forget in-session copies of wallet and key rows that Core statements changed."""
    if not session.identity_map:
        return
    for cls, idents in ((Wallet, account_ids), (ApiKey, key_ids)):
        for ident in idents:
            obj = session.identity_map.get(identity_key(cls, ident))
            if obj is not None:
                session.expire(obj)


def reserve(session: Session, account_id: str, amount: int, *, key_id: str | None = None,
            request_id: str | None = None, ttl_seconds: int = 3900,
            instance_id: str | None = None) -> Hold:
    """Hold ``amount`` atomically, or raise InsufficientFunds / BudgetExceeded.

    With ``instance_id`` (a registered proxy, ``control.core.instances``) the hold lasts as
    long as that process's heartbeat, however long its request runs; without, the sweep
    releases it after ``ttl_seconds``. An account in debt is refused (even for 0)."""
    if amount < 0:
        raise ValidationError("hold amount must not be negative", "amount")
    now = utcnow()
    got = session.execute(_RESERVE_WALLET, {"p_acct": account_id, "p_amount": amount,
                                            "p_now": now}).first()
    if got is None:
        raise InsufficientFunds("insufficient balance for this request")
    if key_id is not None:
        ok = session.execute(_RESERVE_KEY, {"p_key": key_id, "p_amount": amount}).first()
        if ok is None:
            raise BudgetExceeded("this API key's budget is exhausted")
    hold = Hold(id=new_id(), account_id=account_id, key_id=key_id, amount=amount,
                status="open", request_id=request_id, created_at=now,
                expires_at=now + timedelta(seconds=ttl_seconds), instance_id=instance_id)
    session.execute(insert(_H).values(
        id=hold.id, account_id=account_id, key_id=key_id, amount=amount, status="open",
        request_id=request_id, created_at=now, expires_at=hold.expires_at,
        instance_id=instance_id))
    _expire(session, account_id, key_id)
    return hold


def _close(session: Session, hold_id: str, status: str) -> Any:
    """Close an open hold; its (account_id, key_id, amount, request_id), or None if it was
    not open (already settled, released or expired: a retry changes nothing)."""
    return session.execute(_CLOSE_HOLD, {"p_hold": hold_id, "p_status": status,
                                         "p_now": utcnow()}).first()


def settle(session: Session, hold_id: str, actual: int, *, reference: str | None = None,
           estimated: bool = False, config: Config | None = None) -> int:
    """Charge the actual cost against the hold, in full, and free the rest. Returns the
    amount charged (0 if the hold was already closed, so a retry never double-charges).

    A cost beyond the hold and the available balance is charged in full: the account goes
    into debt by the overage. Not the proxy's path: its entries carry no idempotency key
    and no record; the proxy charges only through the exactly-once batched form, which
    writes the record in the same transaction (``control.core.outcomes.settle_outcomes``).

    With ``config``, a charge that takes the balance below ``wallet.low_balance_threshold``
    queues one low-balance notice to the account holder (in this transaction)."""
    hold = _close(session, hold_id, "settled")
    if hold is None:
        return 0
    charge = max(0, actual)
    new_balance = session.execute(_CHARGE_WALLET, {
        "p_acct": hold.account_id, "p_amount": hold.amount, "p_charge": charge,
        "p_now": utcnow()}).scalar_one()
    if hold.key_id is not None:
        session.execute(_CHARGE_KEY, {"p_key": hold.key_id, "p_amount": hold.amount,
                                      "p_charge": charge})
    if charge:
        session.execute(insert(_L).values(
            account_id=hold.account_id, kind="usage", amount=-charge, balance_after=new_balance,
            reference=reference or hold.request_id, actor="proxy", estimated=estimated,
            created_at=utcnow()))
    _expire(session, hold.account_id, hold.key_id)
    if config is not None and charge:
        notify_if_low(session, config, hold.account_id, new_balance + charge, new_balance)
    return charge


def notify_if_low(session: Session, config: Config, account_id: str, before: int,
                  after: int) -> None:
    """Queue a low-balance notice if this charge crossed the threshold (rare: a savepoint,
    so a notice can never undo the charge)."""
    threshold = config.wallet.get("low_balance_threshold") or 0
    if not (before >= threshold > after):
        return
    try:
        with session.begin_nested():
            _notify_low_balance(session, config, account_id, before, after)
    except HushgateError as exc:
        log.error("hushgate: low-balance notice not queued (%s)", type(exc).__name__)


def _notify_low_balance(session: Session, config: Config, account_id: str, before: int,
                        after: int) -> None:
    """Queue a low-balance notice when a charge crosses the configured threshold."""
    threshold = config.wallet.get("low_balance_threshold") or 0
    if not (before >= threshold > after):
        return
    w = config.wallet
    notify.send(session, config, account_id, "low_balance",
                available=format_amount(max(after, 0), w["minor_unit_scale"], w["currency"]),
                threshold=format_amount(threshold, w["minor_unit_scale"], w["currency"]))


def release(session: Session, hold_id: str) -> bool:
    """Free a hold entirely (refused or failed request). Returns False if already closed."""
    hold = _close(session, hold_id, "released")
    if hold is None:
        return False
    session.execute(_CHARGE_WALLET, {"p_acct": hold.account_id, "p_amount": hold.amount,
                                     "p_charge": 0, "p_now": utcnow()}).scalar_one()
    if hold.key_id is not None:
        session.execute(_CHARGE_KEY, {"p_key": hold.key_id, "p_amount": hold.amount,
                                      "p_charge": 0})
    _expire(session, hold.account_id, hold.key_id)
    return True


def sweep_expired_holds(session: Session, hmac_key: bytes, now: datetime | None = None,
                        limit: int = 1000) -> int:
    """Release holds past their expiry that belong to no registered proxy (a crashed caller
    must not freeze funds). Holds of a registered proxy are never released for their age,
    only when its heartbeat stops (``control.core.instances.sweep_dead_instances``)."""
    now = now or utcnow()
    ids = list(session.scalars(select(Hold.id).where(Hold.status == "open", Hold.expires_at < now,
                                                     Hold.instance_id.is_(None))
                               .limit(limit)))
    released = sum(1 for hid in ids if release(session, hid))
    if released:
        record(session, hmac_key, SYSTEM, Action.HOLDS_EXPIRED, "holds", None, count=released)
    return released

"""Balance leases: escrow of part of an account's available balance for one proxy process.

The demarcation protocol (TigerBeetle's pending transfers work the same way): the database
only guarantees that open holds plus open leases never exceed the balance
(``wallets.held`` counts both; every grant is conditional on ``balance - held``). Inside its
lease a process reserves in memory (:class:`LeaseBook`, no database, no thread hop), so the
per-request database work is only the batched charge (``control.core.outcomes``), which
consumes from the lease what the request spent.

- A grant takes at most ``wallet.lease_size`` and at most ``wallet.lease_share_percent`` of
  what is available, so several processes share the end of a balance; once a grant would
  be smaller than a request, the request takes an ordinary per-request hold
  (``wallet.reserve``), which is exact. Zero overspend holds across any number of processes.
- The process refills in the background when its free part runs low, gives the unused part
  back when an account is idle or at shutdown, and the sweep releases the leases of a
  process whose heartbeat stopped (``control.core.instances``).

Lock order (PostgreSQL): the wallet row, then the lease row, everywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import String, bindparam, insert, select, update
from sqlalchemy.orm import Session

from control.core.base import Money, UTCDateTime, new_id, utcnow
from control.core.errors import NotFound, ValidationError
from control.core.models import BalanceLease, Wallet

_W = Wallet.__table__  # type: ignore[attr-defined]
_BL = BalanceLease.__table__  # type: ignore[attr-defined]
_p_acct = bindparam("p_acct", type_=String())
_p_lease = bindparam("p_lease", type_=String())
_p_amount = bindparam("p_amount", type_=Money)
_p_now = bindparam("p_now", type_=UTCDateTime())

_LOCK_WALLET = (select(_W.c.balance, _W.c.held).where(_W.c.account_id == _p_acct)
                .with_for_update())
_HOLD_MORE = (update(_W).where(_W.c.account_id == _p_acct,
                               _W.c.balance - _W.c.held >= _p_amount)
              .values(held=_W.c.held + _p_amount, updated_at=_p_now)
              .returning(_W.c.account_id))
_HOLD_LESS = (update(_W).where(_W.c.account_id == _p_acct)
              .values(held=_W.c.held - _p_amount, updated_at=_p_now))
_LOCK_LEASE = (select(_BL.c.amount, _BL.c.account_id, _BL.c.instance_id)
               .where(_BL.c.id == _p_lease, _BL.c.status == "open").with_for_update())


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """The result of a grant: ``granted`` was added now; ``amount`` is the lease's total."""

    account_id: str
    lease_id: str | None
    granted: int
    amount: int


def grant_lease(session: Session, account_id: str, instance_id: str, want: int, *,
                lease_id: str | None = None, minimum: int = 1,
                share_percent: int = 50) -> LeaseGrant:
    """Lease up to ``want`` more of the account's available balance for ``instance_id``.

    Grants ``min(want, available * share_percent / 100)``, or nothing if that is below
    ``minimum`` (the caller then uses per-request holds). With ``lease_id`` the existing
    lease grows; if it was released meanwhile (the instance was declared dead) NotFound is
    raised and nothing changes."""
    if want <= 0 or minimum <= 0:
        raise ValidationError("a lease must be positive", "amount")
    now = utcnow()
    row = session.execute(_LOCK_WALLET, {"p_acct": account_id}).first()
    current = 0
    if lease_id is not None:
        lease = session.execute(_LOCK_LEASE, {"p_lease": lease_id}).first()
        if lease is None or lease.instance_id != instance_id or lease.account_id != account_id:
            raise NotFound("the lease is no longer open")
        current = lease.amount
    if row is None:
        return LeaseGrant(account_id, lease_id, 0, current)
    available = row.balance - row.held
    grant = min(want, available * share_percent // 100)
    if grant < minimum:
        return LeaseGrant(account_id, lease_id, 0, current)
    if session.execute(_HOLD_MORE, {"p_acct": account_id, "p_amount": grant,
                                    "p_now": now}).first() is None:
        return LeaseGrant(account_id, lease_id, 0, current)  # unreachable under the lock
    if lease_id is None:
        lease_id = new_id()
        session.execute(insert(_BL).values(id=lease_id, account_id=account_id,
                                           instance_id=instance_id, amount=grant,
                                           status="open", created_at=now, updated_at=now))
    else:
        session.execute(update(_BL).where(_BL.c.id == lease_id)
                        .values(amount=_BL.c.amount + grant, updated_at=now))
    return LeaseGrant(account_id, lease_id, grant, current + grant)


def return_lease(session: Session, account_id: str, lease_id: str,
                 amount: int | None = None) -> int:
    """Give back ``amount`` of the lease (all of it, and close it, if None). Returns what
    was given back (0 if the lease was already released)."""
    now = utcnow()
    session.execute(_LOCK_WALLET, {"p_acct": account_id})
    lease = session.execute(_LOCK_LEASE, {"p_lease": lease_id}).first()
    if lease is None:
        return 0
    back = lease.amount if amount is None else max(0, min(amount, lease.amount))
    values: dict[str, object] = {"amount": lease.amount - back, "updated_at": now}
    if amount is None:
        values.update(status="closed", closed_at=now)
    session.execute(update(_BL).where(_BL.c.id == lease_id).values(**values))
    if back:
        session.execute(_HOLD_LESS, {"p_acct": account_id, "p_amount": back, "p_now": now})
    return back


def release_instance_leases(session: Session, instance_id: str) -> tuple[int, int]:
    """Close every open lease of an instance (dead or stopped). Returns (leases, amount)."""
    rows = list(session.execute(select(_BL.c.id, _BL.c.account_id).where(
        _BL.c.instance_id == instance_id, _BL.c.status == "open")
        .order_by(_BL.c.account_id)))
    total = 0
    for lease_id, account_id in rows:
        total += return_lease(session, account_id, lease_id)
    return len(rows), total


def open_leases(session: Session, account_id: str) -> int:
    """What the account's open leases hold in total."""
    return sum(session.scalars(select(BalanceLease.amount).where(
        BalanceLease.account_id == account_id, BalanceLease.status == "open")))


# -- the in-memory side ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request's in-memory reservation inside a lease."""

    account_id: str
    lease_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Refill:
    account_id: str
    lease_id: str | None
    want: int
    need: int = 1  # the largest request the book refused: a smaller grant wouldn't help it


@dataclass(slots=True)
class _Slot:
    lease_id: str | None = None
    granted: int = 0  # what the lease holds, minus charges announced but not yet committed
    in_use: int = 0  # reserved by requests in flight
    last_used: float = 0.0
    missed: int = 0  # the largest request refused since the last refill
    refilling: bool = False  # a refill was handed out and hasn't come back yet


class LeaseBook:
    """A process's leases, one per account, spent in memory. Thread-safe; every method is
    cheap and non-blocking (callable from the event loop); database work is the caller's
    background job (:func:`grant_lease`, :func:`return_lease`).

    ``granted`` never exceeds what the database lease holds: a charge lowers it when it is
    announced (:meth:`finish`), before it is committed, and a return lowers it before the
    database gives the money back. So in-memory reservations are always covered."""

    def __init__(self, *, lease_size: int, low_water_percent: int = 25,
                 idle_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_size = lease_size
        self.low_water = lease_size * low_water_percent // 100
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()

    def try_reserve(self, account_id: str, amount: int) -> Ticket | None:
        """Reserve ``amount`` inside the account's lease, or None (then take a per-request
        hold; a refill for the account is requested)."""
        with self._lock:
            slot = self._slots.get(account_id)
            if slot is None:
                slot = self._slots[account_id] = _Slot()
            slot.last_used = self._clock()
            if slot.lease_id is None or slot.granted - slot.in_use < amount:
                slot.missed = max(slot.missed, amount)
                return None
            slot.in_use += amount
            return Ticket(account_id, slot.lease_id, amount)

    def finish(self, ticket: Ticket, charge: int) -> int:
        """The request ended with ``charge``: free its reservation. Returns what the charge
        consumes from the lease (``min(charge, reserved)``; the rest, if any, is charged
        against the available balance). Pass it to the outcome as ``lease_amount``."""
        consumed = max(0, min(charge, ticket.amount))
        with self._lock:
            slot = self._slots.get(ticket.account_id)
            if slot is not None and slot.lease_id == ticket.lease_id:
                slot.in_use -= ticket.amount
                slot.granted -= consumed
        return consumed

    def free(self, account_id: str) -> int:
        with self._lock:
            slot = self._slots.get(account_id)
            return 0 if slot is None or slot.lease_id is None else slot.granted - slot.in_use

    def refills(self) -> list[Refill]:
        """Accounts in use whose free part is below the low-water mark, or that missed.
        Each is handed out once until :meth:`apply_grant`, :meth:`lease_lost` or
        :meth:`refill_failed` reports back (one grant in flight per account, so a lease is
        never created twice)."""
        now = self._clock()
        out = []
        with self._lock:
            for account_id, s in self._slots.items():
                if s.refilling or now - s.last_used > self.idle_seconds:
                    continue
                free = s.granted - s.in_use
                # low on a lease it has, or a request missed (no lease yet, or too small)
                if s.missed or (s.lease_id is not None and free < self.low_water):
                    want = max(self.lease_size - free, s.missed)
                    s.refilling = True
                    out.append(Refill(account_id, s.lease_id, want,
                                      max(1, s.missed - max(free, 0))))
        return out

    def refill_failed(self, account_id: str) -> None:
        """The grant failed (database error): the account may be handed out again."""
        with self._lock:
            slot = self._slots.get(account_id)
            if slot is not None:
                slot.refilling = False

    def apply_grant(self, grant: LeaseGrant) -> None:
        """Record a committed :func:`grant_lease` (also one that granted nothing)."""
        with self._lock:
            slot = self._slots.setdefault(grant.account_id, _Slot())
            slot.missed, slot.refilling = 0, False
            if grant.lease_id is not None and grant.granted:
                if slot.lease_id != grant.lease_id:
                    slot.lease_id, slot.granted = grant.lease_id, 0
                slot.granted += grant.granted

    def lease_lost(self, account_id: str) -> None:
        """The database says the lease is gone (released by the sweep): forget it."""
        with self._lock:
            slot = self._slots.get(account_id)
            if slot is not None:
                slot.lease_id, slot.granted, slot.refilling = None, 0, False

    def take_surplus(self, *, idle_only: bool = True) -> list[tuple[str, str, int]]:
        """Take the free part of idle accounts' leases (all accounts if not ``idle_only``)
        out of the book: [(account_id, lease_id, amount)] for :func:`return_lease`. Call
        :meth:`restore` with an entry whose return failed."""
        now = self._clock()
        out = []
        with self._lock:
            for account_id, s in self._slots.items():
                if s.lease_id is None or (idle_only and now - s.last_used <= self.idle_seconds):
                    continue
                free = s.granted - s.in_use
                if free > 0:
                    s.granted -= free
                    out.append((account_id, s.lease_id, free))
        return out

    def take_account_surplus(self, account_id: str) -> tuple[str, str, int] | None:
        """Take the free part of one account's lease out of the book (for
        :func:`return_lease`): a request it can't cover needs the money as a hold."""
        with self._lock:
            s = self._slots.get(account_id)
            if s is None or s.lease_id is None or s.granted - s.in_use <= 0:
                return None
            free = s.granted - s.in_use
            s.granted -= free
            return account_id, s.lease_id, free

    def restore(self, account_id: str, lease_id: str, amount: int) -> None:
        with self._lock:
            slot = self._slots.setdefault(account_id, _Slot())
            if slot.lease_id in (None, lease_id):
                slot.lease_id = lease_id
                slot.granted += amount

    def clear(self) -> None:
        """The instance was declared dead: its leases are gone; reserve nothing from them."""
        with self._lock:
            self._slots.clear()

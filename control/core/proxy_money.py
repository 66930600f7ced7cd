"""One proxy process's money path, assembled: what the Gateway addon calls.

:class:`ProxyMoney` ties together the instance registry (``instances``), the balance leases
(``leases.LeaseBook``), the per-request fallback holds (``wallet.reserve``) and the group
commit of outcomes (``committer.OutcomeCommitter``), so the proxy integration is a thin
layer with no money rule of its own:

- start-up: ``start()`` registers the instance, replays the outcome journal, starts the
  committer and one background thread (heartbeat, lease refills, idle returns);
- per request, on the event loop: ``reserve_in_memory(account, amount, key)`` returns a
  :class:`Reservation` or None; on None, on a worker thread: ``reserve_hold(...)`` (raises
  InsufficientFunds / BudgetExceeded → 402);
- at the end of the response: ``finish(reservation, record, charge, estimated)`` returns a
  ``concurrent.futures.Future``; await it (``asyncio.wrap_future``) before releasing the
  last byte. A refused or failed request after a reservation: ``finish(..., charge=0)``;
- shutdown: ``close()`` commits what is queued, returns the leases and deregisters.

Keys with a budget never spend from a lease (budgets are per key, leases per account):
they always take a per-request hold.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from control.core import instances, leases, wallet
from control.core.committer import OutcomeCommitter, OutcomeJournal
from control.core.config import Config
from control.core.db import Database
from control.core.errors import NotFound
from control.core.leases import LeaseBook, Ticket
from control.core.outcomes import Outcome

log = logging.getLogger("hushgate.money")

#: How often the background thread looks for leases to refill (seconds).
REFILL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Reservation:
    """A request's reserved funds: a ticket inside a lease, or a per-request hold."""

    account_id: str
    amount: int
    ticket: Ticket | None = None
    hold_id: str | None = None


class ProxyMoney:
    def __init__(self, db: Database, config: Config, *, journal_path: str | None = None,
                 max_wait_ms: float = 2.0, write_lock: Any = None) -> None:
        w = config.wallet
        self.db, self.config = db, config
        self.book = LeaseBook(lease_size=w["lease_size"], idle_seconds=w["lease_idle_seconds"])
        self._share = w["lease_share_percent"]
        self._heartbeat = float(w["heartbeat_seconds"])
        self._ttl = w["hold_ttl_seconds"]
        self._journal = OutcomeJournal(journal_path) if journal_path else None
        self._write_lock = write_lock
        self.committer = OutcomeCommitter(db, config=config, journal=self._journal,
                                          max_wait_ms=max_wait_ms, write_lock=write_lock)
        self.instance_id: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.replayed = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> ProxyMoney:
        self.instance_id = self._register()
        self.replayed = self.committer.replay()
        self.committer.start()
        self._thread = threading.Thread(target=self._run, name="hushgate-money", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Commit queued outcomes, return every lease, deregister."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.committer.close(timeout)
        self._return(idle_only=False)
        if self.instance_id is not None:
            with self._tx() as s:
                instances.deregister(s, self.instance_id)
        if self._journal is not None:
            self._journal.close()

    # -- per request --------------------------------------------------------------------

    def reserve_in_memory(self, account_id: str, amount: int, *,
                          key_budget: int | None = None) -> Reservation | None:
        """Non-blocking: reserve inside this process's lease, or None (then call
        :meth:`reserve_hold` on a worker thread; a refill is started)."""
        if key_budget is not None:
            return None
        ticket = self.book.try_reserve(account_id, amount)
        if ticket is None:
            self._wake.set()
            return None
        return Reservation(account_id, amount, ticket=ticket)

    def reserve_hold(self, account_id: str, amount: int, *, key_id: str | None,
                     request_id: str) -> Reservation:
        """Blocking: an exact per-request hold owned by this instance. Raises
        InsufficientFunds / BudgetExceeded."""
        with self._tx() as s:
            hold = wallet.reserve(s, account_id, amount, key_id=key_id, request_id=request_id,
                                  ttl_seconds=self._ttl, instance_id=self.instance_id)
        return Reservation(account_id, amount, hold_id=hold.id)

    def finish(self, reservation: Reservation | None, record: dict[str, Any], charge: int, *,
               estimated: bool = False) -> Future[None]:
        """Queue the request's charge and record; the future resolves once durable."""
        if reservation is not None and reservation.ticket is not None:
            consumed = self.book.finish(reservation.ticket, charge)
            outcome = Outcome(record, charge=charge, lease_id=reservation.ticket.lease_id,
                              lease_amount=consumed, estimated=estimated)
        else:
            outcome = Outcome(record, charge=charge, estimated=estimated,
                              hold_id=reservation.hold_id if reservation else None)
        return self.committer.submit(outcome)

    # -- background ---------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """A write transaction (under the process's SQLite write lock, if given)."""
        with self._write_lock or nullcontext(), self.db.transaction() as session:
            yield session

    def _register(self) -> str:
        with self._tx() as s:
            return instances.register(s)

    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_beat:
                    self._beat()
                    self._return(idle_only=True)
                    next_beat = now + self._heartbeat
                self._refill()
            except Exception as exc:  # noqa: BLE001 - keep the money thread alive
                log.error("hushgate: money background work failed (%s)", type(exc).__name__)
            self._wake.wait(REFILL_SECONDS)
            self._wake.clear()

    def _beat(self) -> None:
        assert self.instance_id is not None
        with self._tx() as s:
            alive = instances.heartbeat(s, self.instance_id)
        if not alive:  # declared dead (a long pause): its leases are gone
            log.warning("hushgate: this proxy was declared dead; registering again")
            self.book.clear()
            self.instance_id = self._register()

    def _refill(self) -> None:
        assert self.instance_id is not None
        for r in self.book.refills():
            try:
                with self._tx() as s:
                    grant = leases.grant_lease(s, r.account_id, self.instance_id, r.want,
                                               lease_id=r.lease_id,
                                               share_percent=self._share)
                self.book.apply_grant(grant)
            except NotFound:
                self.book.lease_lost(r.account_id)
            except Exception:
                self.book.refill_failed(r.account_id)
                raise

    def _return(self, *, idle_only: bool) -> None:
        for account_id, lease_id, amount in self.book.take_surplus(idle_only=idle_only):
            try:
                with self._tx() as s:
                    leases.return_lease(s, account_id, lease_id, amount)
            except Exception:
                self.book.restore(account_id, lease_id, amount)
                raise

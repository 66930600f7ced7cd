"""One proxy process's money path, assembled: what the Gateway addon calls.

:class:`ProxyMoney` ties together the instance registry (``instances``), the balance leases
(``leases.LeaseBook``), the per-request fallback holds (``wallet.reserve``) and the group
commit of outcomes (``committer.OutcomeCommitter``), so the proxy integration is a thin
layer with no money rule of its own:

- start-up: ``start()`` registers the instance, replays the outcome journal (its own,
  claimed by a lock in ``journal_dir``, and any journal a process that is gone left
  there), starts the committer and one background thread (heartbeat, lease refills, idle
  returns, and the sweep of dead instances, so a proxy-only deployment frees the funds of a
  crashed peer without the control plane's housekeeping);
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
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from control.core import instances, leases, wallet
from control.core.committer import OutcomeCommitter, OutcomeJournal, is_unreachable
from control.core.config import Config
from control.core.db import Database
from control.core.errors import InsufficientFunds, NotFound
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
                 journal_dir: Any = None, max_wait_ms: float = 2.0, max_batch: int = 500,
                 write_lock: Any = None) -> None:
        w = config.wallet
        self.db, self.config = db, config
        self.book = LeaseBook(lease_size=w["lease_size"], idle_seconds=w["lease_idle_seconds"])
        self._share = w["lease_share_percent"]
        self._heartbeat = float(w["heartbeat_seconds"])
        self._dead_after = float(w["instance_dead_after_seconds"])
        self._ttl = w["hold_ttl_seconds"]
        self._journal_path, self._journal_dir = journal_path, journal_dir
        self._journal: OutcomeJournal | None = None
        self._write_lock = write_lock
        self._commit_args = dict(config=config, max_wait_ms=max_wait_ms, max_batch=max_batch,
                                 write_lock=write_lock, on_commit=self._committed)
        self._after_commit: Callable[[list[dict[str, Any]]], None] | None = None
        self.committer = OutcomeCommitter(db, **self._commit_args)
        self.instance_id: str | None = None
        self._lock = threading.Lock()  # registration
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.replayed = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> ProxyMoney:
        if self._journal_dir is not None:
            self._journal = OutcomeJournal.claim(self._journal_dir)
        elif self._journal_path:
            self._journal = OutcomeJournal(self._journal_path)
        if self._journal is not None:
            self.committer = OutcomeCommitter(self.db, journal=self._journal,
                                              **self._commit_args)
        self.replayed = self.committer.replay()
        self.committer.start()
        try:
            self.instance_id = self._register()
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            # Started with the database down: requests are refused (503) until the
            # background thread registers; finished ones are journaled meanwhile.
            log.error("hushgate: database unreachable at start-up (%s); retrying",
                      type(exc).__name__)
        self._thread = threading.Thread(target=self._run, name="hushgate-money", daemon=True)
        self._thread.start()
        return self

    def on_commit(self, fn: Callable[[list[dict[str, Any]]], None]) -> None:
        """Call ``fn(records)`` (committer thread) with each committed batch's final
        records (``cost`` and ``debt`` set)."""
        self._after_commit = fn

    def _committed(self, rows: list[dict[str, Any]]) -> None:
        if self._after_commit is not None:
            self._after_commit(rows)

    @property
    def alive(self) -> bool:
        """Registered, and the committer and the background thread are running."""
        return (self.instance_id is not None and self.committer.alive
                and self._thread is not None and self._thread.is_alive())

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
        InsufficientFunds / BudgetExceeded.

        If the balance is short only because this process's own lease keeps part of it,
        the lease's free part is given back first and the hold tried again: a lease never
        refuses a request the balance covers."""
        try:
            return self._hold(account_id, amount, key_id, request_id)
        except InsufficientFunds:
            surplus = self.book.take_account_surplus(account_id)
            if surplus is None:
                raise
            try:
                with self._tx() as s:
                    leases.return_lease(s, *surplus)
            except Exception:
                self.book.restore(*surplus)
                raise
            return self._hold(account_id, amount, key_id, request_id)

    def _hold(self, account_id: str, amount: int, key_id: str | None,
              request_id: str) -> Reservation:
        if self.instance_id is None:  # not registered yet: raises while the database is down
            self._registered()
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

    def _registered(self) -> None:
        with self._lock:
            if self.instance_id is None:
                self.instance_id = self._register()

    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_beat:
                    next_beat = now + self._heartbeat
                    if self.instance_id is None:
                        self._registered()
                    self._beat()
                    self._return(idle_only=True)
                    self._sweep()
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

    def _sweep(self) -> None:
        """Free the holds and leases of proxies whose heartbeat stopped (any process may
        sweep: each release is conditional, concurrent sweeps release once)."""
        with self._tx() as s:
            instances.sweep_dead_instances(s, self.config.audit_hmac_key(),
                                           dead_after_seconds=self._dead_after)

    def _refill(self) -> None:
        if self.instance_id is None:
            return
        for r in self.book.refills():
            try:
                with self._tx() as s:
                    grant = leases.grant_lease(s, r.account_id, self.instance_id, r.want,
                                               lease_id=r.lease_id, minimum=r.need,
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

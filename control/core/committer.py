"""Group commit of finished requests: many outcomes share one transaction (and one fsync).

The proxy calls :meth:`OutcomeCommitter.submit` when a response ends and awaits the
returned future (``asyncio.wrap_future``) before it releases the last byte, so a request's
charge and record are durable before the client sees its end. One thread gathers outcomes
for at most ``max_wait_ms`` (or ``max_batch`` of them) and settles them with
:func:`control.core.outcomes.settle_outcomes` in ONE transaction.

Without a journal, a future resolves when its batch is committed: nothing delivered is
ever lost, but while the database is unreachable, ends of responses wait (retried with
backoff). With an :class:`OutcomeJournal`, a future resolves once its batch is appended
and fsynced to the local journal (metadata only, 0600); the database commit follows, and
:meth:`OutcomeCommitter.replay` at start-up commits whatever a crash left in the journal
(idempotent: the request id is the charge's idempotency key). Loss window with a journal:
none for acknowledged requests, as long as the journal's disk survives.

With a journal, outcomes spent inside a balance lease reach the database in batches at
most :data:`SETTLE_DELAY` seconds late (or sooner, once ``max_batch`` are waiting): nothing
waits for them (the lease's free part is already back in memory), and one transaction per
request at low concurrency would cost more CPU than the request itself. An outcome with a
per-request hold is settled at once, since that hold blocks the customer's balance until
it is closed. Emptying the journal needs no fsync: a replayed line of a request already
committed is skipped.

A batch that fails for any reason other than an unreachable database is split in halves
until the outcome that fails is alone (poison isolation): the others are committed; the
poison outcome is retried once with a minimal record (the same money, the fields that can't
be wrong), and if that fails too it is appended to the journal's ``.rejected`` file (0600,
metadata only) and logged by request id, never dropped silently (``rejected`` counts them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from control.core.config import Config
from control.core.db import Database
from control.core.outcomes import Outcome, Settlement, settle_outcomes

log = logging.getLogger("hushgate.committer")
_STOP = object()
#: With a journal: how late a lease-backed outcome may reach the database (seconds).
SETTLE_DELAY = 0.05
#: After a failed database commit of journaled outcomes, the next try (seconds).
RETRY_DELAY = 0.5


class OutcomeJournal:
    """An append-only JSON-lines file of outcomes (metadata only), fsynced per batch."""

    def __init__(self, path: str | os.PathLike[str], *, lock: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(self._fd, 0o600)
        if lock:  # one process per journal: raises BlockingIOError if another has it
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self._fd)
                raise

    @classmethod
    def claim(cls, directory: str | os.PathLike[str]) -> OutcomeJournal:
        """The first journal ``<directory>/<n>.jsonl`` no running process holds (the lock
        is the kernel's: a killed process's journal is free for its replacement)."""
        for n in range(10_000):
            try:
                return cls(Path(directory) / f"{n}.jsonl", lock=True)
            except BlockingIOError:
                continue
        raise OSError("no free outcome journal")

    def orphans(self) -> list[OutcomeJournal]:
        """The other journals of the directory that no running process holds and that
        have content (left by processes that are gone: e.g. fewer workers now)."""
        out = []
        for path in sorted(self.path.parent.glob("*.jsonl")):
            if path == self.path or path.stat().st_size == 0:
                continue
            try:
                out.append(OutcomeJournal(path, lock=True))
            except BlockingIOError:
                continue
        return out

    def reject(self, outcome: Outcome) -> None:
        """Keep an outcome that can't be committed (see the module docstring)."""
        path = self.path.with_suffix(".rejected")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(outcome.to_json(), separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, outcomes: list[Outcome]) -> None:
        data = "".join(json.dumps(o.to_json(), separators=(",", ":")) + "\n"
                       for o in outcomes).encode()
        os.write(self._fd, data)
        os.fsync(self._fd)

    def replay(self) -> list[Outcome]:
        """Every complete line (a torn last line was never acknowledged: skipped)."""
        out = []
        with self.path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                out.append(Outcome.from_json(json.loads(line)))
        return out

    def truncate(self) -> None:
        """Empty the journal once all of it is committed. No fsync: if the emptying is lost
        in a crash, replaying lines already committed is a no-op (skipped by request id),
        and the next append's fsync makes it durable anyway."""
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        os.close(self._fd)  # also releases the lock


def is_unreachable(exc: BaseException) -> bool:
    """The database can't be reached (retry the same batch later), as opposed to a batch
    that fails on its content (split it, see the module docstring)."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout
                      | ConnectionError)


#: A fallback record (see the module docstring): every field at a value that can't be wrong,
#: and of the original only the identifiers the charge needs.
_FALLBACK: dict[str, Any] = {
    "key_id": None, "endpoint": "other", "method": "POST", "provider": None, "model": None,
    "stream": False, "status": 0, "error_type": "internal_error", "input_tokens": 0,
    "output_tokens": 0, "cached_tokens": 0, "estimated": True, "cost": 0, "latency_ms": 0,
    "ttfb_ms": None, "upstream_ms": None, "request_bytes": 0, "response_bytes": 0,
    "client_ip": None, "user_agent": None}


def minimal_record(record: Any) -> dict[str, Any]:
    from control.core.base import utcnow

    out = dict(_FALLBACK)
    out.update(request_id=str(record.get("request_id")), account_id=record.get("account_id"),
               time=utcnow())
    return out


class OutcomeCommitter:
    """``submit(outcome) -> Future``; ``start()``, ``replay()``, ``close()``."""

    def __init__(self, db: Database, *, config: Config | None = None, max_batch: int = 500,
                 max_wait_ms: float = 2.0, journal: OutcomeJournal | None = None,
                 write_lock: contextlib.AbstractContextManager[Any] | None = None,
                 on_commit: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self._db = db
        self._on_commit = on_commit
        self._config = config
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000
        self._journal = journal
        self._write_lock = write_lock or contextlib.nullcontext()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hushgate-committer",
                                        daemon=True)
        self._unsettled: list[Outcome] = []  # journaled, not yet in the database
        self._settle_at: float | None = None  # when the unsettled outcomes are due
        self.batches = 0
        self.committed = 0
        self.rejected = 0
        self.oldest_wait = 0.0  # how long the oldest outcome of the last batch waited
        self._pending = 0  # submitted, not yet in the database (or rejected)
        self._idle = threading.Condition()

    def start(self) -> OutcomeCommitter:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def replay(self) -> int:
        """Take over what a previous run left: the outcomes of this journal and of any
        journal a process that is gone left beside it (copied into this one, fsynced,
        before the orphan is emptied). Call before :meth:`start`. They are committed now if
        the database is reachable, else by the committer thread once it is (a proxy starts
        while its database is down). Returns how many were newly charged now."""
        if self._journal is None:
            return 0
        pending = self._journal.replay()
        for orphan in self._journal.orphans():
            try:
                left = orphan.replay()
                if left:
                    self._journal.append(left)
                    pending.extend(left)
                orphan.truncate()
            finally:
                orphan.close()
        if not pending:
            return 0
        self._unsettled.extend(pending)
        with self._idle:
            self._pending += len(pending)
        return self._flush_unsettled()

    def submit(self, outcome: Outcome) -> Future[None]:
        """Queue one finished request; the future resolves once it is durable."""
        future: Future[None] = Future()
        # Running from the start: a waiter that goes away (its client disconnected, its
        # task was cancelled) can't cancel it, so resolving it never fails and the
        # committer thread never dies of it. The outcome is committed all the same.
        future.set_running_or_notify_cancel()
        with self._idle:
            self._pending += 1
        self._queue.put((outcome, future, time.monotonic()))
        return future

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted is in the database (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _done(self, n: int) -> None:
        with self._idle:
            self._pending -= n
            self._idle.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _settle(self, outcomes: list[Outcome]) -> Settlement:
        with self._write_lock, self._db.transaction() as session:
            done = settle_outcomes(session, outcomes, config=self._config)
        if self._on_commit is not None:
            rows = [{**o.record, "cost": done.charged.get(o.request_id, 0),
                     "debt": o.request_id in done.debt}
                    for o in outcomes if o.request_id not in done.skipped]
            try:
                self._on_commit(rows)
            except Exception as exc:  # noqa: BLE001 - the money is committed; report only
                log.error("hushgate: after-commit hook failed (%s)", type(exc).__name__)
        return done

    def _settle_isolating(self, outcomes: list[Outcome]) -> int:
        """Settle a batch; one that fails on its content is split until the poison outcome
        is alone (see the module docstring). Returns how many were newly charged. Raises
        only when the database is unreachable (the caller retries the whole batch: what
        was committed meanwhile is skipped by request id)."""
        try:
            return len(self._settle(outcomes).charged)
        except Exception as exc:  # noqa: BLE001 - classified below
            if is_unreachable(exc):
                raise
            if len(outcomes) > 1:
                half = len(outcomes) // 2
                return (self._settle_isolating(outcomes[:half])
                        + self._settle_isolating(outcomes[half:]))
            return self._poison(outcomes[0], exc)

    def _poison(self, outcome: Outcome, exc: BaseException) -> int:
        rid = outcome.request_id
        log.error("hushgate: outcome of request %s can't be committed (%s); retrying it "
                  "with a minimal record", rid, type(exc).__name__)
        minimal = minimal_record(outcome.record)
        fallback = Outcome(minimal, charge=outcome.charge, hold_id=outcome.hold_id,
                           lease_id=outcome.lease_id, lease_amount=outcome.lease_amount,
                           estimated=True)
        try:
            return len(self._settle([fallback]).charged)
        except Exception as again:  # noqa: BLE001 - kept, never dropped silently
            if is_unreachable(again):
                raise
            self.rejected += 1
            log.error("hushgate: outcome of request %s rejected (%s); kept in the rejected "
                      "outcomes file", rid, type(again).__name__)
            if self._journal is not None:
                self._journal.reject(outcome)
            return 0

    def _run(self) -> None:
        stop = False
        while not stop:
            try:  # journaled outcomes still to commit: commit them when due, even when idle
                first = self._queue.get(timeout=self._until_due())
            except queue.Empty:
                self._flush_unsettled()
                continue
            if first is _STOP:
                break
            batch = [first]
            deadline = time.monotonic() + self._max_wait
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
        self._flush_unsettled()

    @property
    def pending(self) -> int:
        """Submitted outcomes not yet in the database."""
        return self._pending

    def _commit(self, batch: list[tuple[Outcome, Future[None], float]]) -> None:
        outcomes = [o for o, _, _ in batch]
        self.oldest_wait = time.monotonic() - min(t for _, _, t in batch)
        if self._journal is not None:
            try:
                self._journal.append(outcomes)
            except OSError as exc:
                log.error("hushgate: the outcome journal failed (%s)", type(exc).__name__)
                for _, f, _ in batch:
                    f.set_exception(exc)
                self._done(len(batch))
                return
            for _, f, _ in batch:
                f.set_result(None)  # durable in the journal
            self._unsettled.extend(outcomes)
            if self._settle_at is None:
                self._settle_at = time.monotonic() + SETTLE_DELAY
            if (len(self._unsettled) >= self._max_batch or time.monotonic() >= self._settle_at
                    or any(o.hold_id is not None for o in outcomes)):
                self._flush_unsettled()
            return
        delay = 0.05
        while True:  # no journal: durable only in the database
            try:
                self._settle_isolating(outcomes)
                break
            except Exception as exc:  # noqa: BLE001 - unreachable: retried; the requests wait
                log.error("hushgate: committing %d outcomes failed (%s); retrying",
                          len(outcomes), type(exc).__name__)
                time.sleep(delay)
                delay = min(2.0, delay * 2)
        self.batches += 1
        self.committed += len(outcomes)
        self._done(len(outcomes))
        for _, f, _ in batch:
            f.set_result(None)

    def _until_due(self) -> float | None:
        """How long the committer may wait for new outcomes before the journaled ones are
        due (None: nothing is waiting)."""
        if not self._unsettled:
            return None
        if self._settle_at is None:
            self._settle_at = time.monotonic()
        return max(0.0, self._settle_at - time.monotonic())

    def _flush_unsettled(self) -> int:
        """Commit the journaled outcomes; returns how many were newly charged. On failure
        they stay journaled and are retried after :data:`RETRY_DELAY`."""
        charged = 0
        self._settle_at = None
        if self._unsettled:
            try:
                while self._unsettled:
                    charged += self._settle_isolating(self._unsettled[:self._max_batch])
                    n = min(len(self._unsettled), self._max_batch)
                    self.batches += 1
                    self.committed += n
                    del self._unsettled[:n]
                    self._done(n)
            except Exception as exc:  # noqa: BLE001 - unreachable: kept in the journal; retried
                log.error("hushgate: committing journaled outcomes failed (%s)",
                          type(exc).__name__)
                self._settle_at = time.monotonic() + RETRY_DELAY
                return charged  # still in the journal: retried, or replayed at start-up
        # Everything journaled is committed now (what is still queued was never written):
        # empty the journal, so it never grows under sustained load.
        if self._journal is not None:
            self._journal.truncate()
        return charged

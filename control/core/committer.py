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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from control.core.config import Config
from control.core.db import Database
from control.core.outcomes import Outcome, settle_outcomes

log = logging.getLogger("hushgate.committer")
_STOP = object()


class OutcomeJournal:
    """An append-only JSON-lines file of outcomes (metadata only), fsynced per batch."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(self._fd, 0o600)

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
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class OutcomeCommitter:
    """``submit(outcome) -> Future``; ``start()``, ``replay()``, ``close()``."""

    def __init__(self, db: Database, *, config: Config | None = None, max_batch: int = 500,
                 max_wait_ms: float = 2.0, journal: OutcomeJournal | None = None,
                 write_lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self._db = db
        self._config = config
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000
        self._journal = journal
        self._write_lock = write_lock or contextlib.nullcontext()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hushgate-committer",
                                        daemon=True)
        self._unsettled: list[Outcome] = []  # journaled, not yet in the database
        self.batches = 0
        self.committed = 0

    def start(self) -> OutcomeCommitter:
        self._thread.start()
        return self

    def replay(self) -> int:
        """Commit what a previous run left in the journal; call before :meth:`start`.
        Returns how many requests were newly charged and recorded."""
        if self._journal is None:
            return 0
        pending = self._journal.replay()
        charged = 0
        for i in range(0, len(pending), self._max_batch):
            charged += len(self._settle(pending[i:i + self._max_batch]).charged)
        self._journal.truncate()
        return charged

    def submit(self, outcome: Outcome) -> Future[None]:
        """Queue one finished request; the future resolves once it is durable."""
        future: Future[None] = Future()
        self._queue.put((outcome, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _settle(self, outcomes: list[Outcome]):
        with self._write_lock, self._db.transaction() as session:
            return settle_outcomes(session, outcomes, config=self._config)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
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
        self._flush_unsettled(final=True)

    def _commit(self, batch: list[tuple[Outcome, Future[None]]]) -> None:
        outcomes = [o for o, _ in batch]
        if self._journal is not None:
            try:
                self._journal.append(outcomes)
            except OSError as exc:
                for _, f in batch:
                    f.set_exception(exc)
                return
            for _, f in batch:
                f.set_result(None)  # durable in the journal
            self._unsettled.extend(outcomes)
            self._flush_unsettled()
            return
        delay = 0.05
        while True:  # no journal: durable only in the database
            try:
                self._settle(outcomes)
                break
            except Exception as exc:  # noqa: BLE001 - retried; the requests wait
                log.error("hushgate: committing %d outcomes failed (%s); retrying",
                          len(outcomes), type(exc).__name__)
                time.sleep(delay)
                delay = min(2.0, delay * 2)
        self.batches += 1
        self.committed += len(outcomes)
        for _, f in batch:
            f.set_result(None)

    def _flush_unsettled(self, final: bool = False) -> None:
        if self._unsettled:
            try:
                for i in range(0, len(self._unsettled), self._max_batch):
                    self._settle(self._unsettled[i:i + self._max_batch])
            except Exception as exc:  # noqa: BLE001 - kept in the journal; retried next batch
                log.error("hushgate: committing journaled outcomes failed (%s)",
                          type(exc).__name__)
                return
            self.batches += 1
            self.committed += len(self._unsettled)
            self._unsettled.clear()
        # Everything journaled is committed now: empty the journal (not after every batch).
        if self._journal is not None and (final or self._queue.empty()):
            self._journal.truncate()

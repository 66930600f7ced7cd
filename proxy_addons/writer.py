"""The background writer: settles holds and writes request records off the hot path.

Hooks only ``submit()`` a :class:`Outcome` (a queue put); one thread drains the queue:
each outcome's hold is settled (or released) in its own transaction, which fixes the charged
amount written into the record; records are then inserted in batches of
``proxy.record_batch_size`` at least every ``proxy.record_flush_ms``, and appended to the
optional JSON-lines sink. ``close()`` flushes everything (graceful shutdown).

On SQLite every write transaction takes the process's write lock (see
``proxy_addons.services.write_lock_for``), shared with the reserve stage. (Settling chunks
of 1, 4 or 16 outcomes per transaction, each in a savepoint, with their records inserted in
the same transaction, was measured and was slower than this: keep the settlements short
and the record insert batched.)

If the database is down, the batch is retried with backoff; holds that could not be settled
expire by themselves (``wallet.hold_ttl_seconds``), so funds are never frozen forever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control.core import records, wallet
from control.core.config import Config
from control.core.db import Database
from proxy_addons.observer import NullObserver, call

log = logging.getLogger("hushgate.proxy")

_STOP = object()
MAX_ATTEMPTS = 5


@dataclass(slots=True)
class Outcome:
    """What the writer must do for one finished request."""

    record: dict[str, Any]
    hold_id: str | None = None
    charge: int = 0  # 0 with a hold => release
    estimated: bool = False
    attempts: int = 0
    submitted_at: float = 0.0


class RecordWriter:
    def __init__(self, db: Database, *, batch_size: int = 500, flush_ms: int = 200,
                 jsonl_path: str | os.PathLike[str] | None = None,
                 write_lock: contextlib.AbstractContextManager[Any] | None = None,
                 config: Config | None = None, observer: Any = None) -> None:
        self._db = db
        self.observer = observer if observer is not None else NullObserver()
        self._config = config  # for the low-balance notice a settlement may queue
        self._write_lock = write_lock or contextlib.nullcontext()
        self._batch_size = batch_size
        self._flush = flush_ms / 1000
        self._jsonl = Path(jsonl_path) if jsonl_path else None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="hushgate-writer", daemon=True)
        self._started = False
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def alive(self) -> bool:
        """The writer thread is running (the proxy's health check reports it)."""
        return self._started and self._thread.is_alive()

    def submit(self, outcome: Outcome) -> None:
        """Queue one request's outcome. Never blocks on the database."""
        outcome.submitted_at = time.monotonic()
        with self._idle:
            self._pending += 1
        self._queue.put(outcome)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted outcome is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop the thread."""
        if not self._started:
            return
        self.drain(timeout)
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._started = False

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[Outcome] = []
            deadline = None
            while len(batch) < self._batch_size:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                if deadline is None:
                    deadline = time.monotonic() + self._flush
            if batch:
                self._write(batch)

    def _write(self, batch: list[Outcome]) -> None:
        done: list[Outcome] = []
        retry: list[Outcome] = []
        for outcome in batch:
            try:
                self._settle(outcome)
                done.append(outcome)
            except Exception as exc:  # noqa: BLE001 - keep the writer alive
                outcome.attempts += 1
                call(self.observer, "db_error")
                log.error("hushgate: settling failed (%s)", type(exc).__name__)
                (retry if outcome.attempts < MAX_ATTEMPTS else done).append(outcome)
        rows = [o.record for o in done]
        try:
            if rows:
                with self._write_lock, self._db.transaction() as session:
                    records.insert_records(session, rows)
                self._sink(rows)
            self.written += len(rows)
            for row in rows:
                call(self.observer, "request_finished", row)
        except Exception as exc:  # noqa: BLE001
            call(self.observer, "db_error")
            log.error("hushgate: writing %d records failed (%s)", len(rows),
                      type(exc).__name__)
            for o in done:
                o.attempts += 1
                if o.attempts < MAX_ATTEMPTS:
                    o.hold_id = None  # the money part is done; retry only the record
                    retry.append(o)
                else:
                    self.dropped += 1
            done = [o for o in done if o.attempts >= MAX_ATTEMPTS]
        if retry:
            time.sleep(min(2.0, 0.1 * 2 ** max(o.attempts for o in retry)))
            for o in retry:
                self._queue.put(o)
        with self._idle:
            self._pending -= len(batch) - len(retry)
            self._idle.notify_all()
        oldest = min(o.submitted_at for o in batch)
        call(self.observer, "writer_queue", self._queue.qsize(),
             max(0.0, time.monotonic() - oldest))

    def _settle(self, outcome: Outcome) -> None:
        if outcome.hold_id is None:
            return
        request_id = outcome.record["request_id"]
        with self._write_lock, self._db.transaction() as session:
            if outcome.charge > 0:
                charged = wallet.settle(session, outcome.hold_id, outcome.charge,
                                        reference=request_id, estimated=outcome.estimated,
                                        config=self._config)
            else:
                wallet.release(session, outcome.hold_id)
                charged = 0
        outcome.record["cost"] = charged
        outcome.hold_id = None

    def _sink(self, rows: list[dict[str, Any]]) -> None:
        if self._jsonl is None:
            return
        self._jsonl.parent.mkdir(parents=True, exist_ok=True)
        with self._jsonl.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, separators=(",", ":"), sort_keys=True) + "\n")

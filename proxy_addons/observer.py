"""The Gateway's metrics seam: what it reports, and the observer that ignores it.

The proxy calls these methods (all must be cheap and never raise into the data path; the
Gateway and writer guard every call):

* ``request_finished(record)`` — once per request, with the final metadata record (the dict
  committed, cost and debt set), from the committer thread;
* ``holds_in_flight(n)`` — requests holding funds right now (event-loop thread);
* ``writer_queue(depth, lag_seconds)`` — after each committed batch: outcomes not yet in
  the database, and how long the oldest of the batch waited;
* ``db_error()`` / ``redis_error()`` — a failed database / Redis operation;
* ``revocation_seen(seconds)`` — a cached key's revocation reached this process: seconds
  from its ``revoked_at`` to the key poller refusing it (key-poller thread).

If the observer also has ``render() -> (body, content type)``, the proxy answers
``GET /metrics`` with it (same access rules as ``/healthz``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any


class NullObserver:
    """Reports nothing (the default)."""

    def request_finished(self, record: Mapping[str, Any]) -> None:
        pass

    def holds_in_flight(self, n: int) -> None:
        pass

    def writer_queue(self, depth: int, lag_seconds: float) -> None:
        pass

    def db_error(self) -> None:
        pass

    def redis_error(self) -> None:
        pass

    def revocation_seen(self, seconds: float) -> None:
        pass


def call(observer: Any, name: str, *args: Any) -> None:
    """Call an observer method; an observer's failure never reaches the data path."""
    with contextlib.suppress(Exception):  # metrics must never break a request
        getattr(observer, name)(*args)

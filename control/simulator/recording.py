"""What tests can inspect: the requests the simulator received."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SimRequest:
    """One request as the simulator received it.

    ``headers`` has lower-case names (repeated headers joined by ``", "``); ``body`` is the
    parsed JSON (``None`` if the body was empty or not JSON); ``raw_body`` the bytes;
    ``fault`` the fault applied (canonical name) or ``None``.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes = b""
    fault: str | None = None
    endpoint: str | None = None
    received_at: float = field(default_factory=time.time)

    def header(self, name: str) -> str | None:
        """A header value by case-insensitive name."""
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The parsed JSON body (``None`` if it was not JSON)."""
        return self.body

    @property
    def api_key(self) -> str | None:
        """The key as the provider received it: ``x-api-key``, else the Bearer token."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        auth = self.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None


class RequestLog:
    """A thread-safe, bounded list of :class:`SimRequest` (oldest dropped first)."""

    def __init__(self, maxlen: int | None = 10_000) -> None:
        self._items: deque[SimRequest] = deque(maxlen=maxlen)
        self._cond = threading.Condition()

    def add(self, request: SimRequest) -> None:
        """Record one request."""
        with self._cond:
            self._items.append(request)
            self._cond.notify_all()

    def snapshot(self) -> list[SimRequest]:
        """A copy of the recorded requests, oldest first."""
        with self._cond:
            return list(self._items)

    def clear(self) -> None:
        """Forget every recorded request."""
        with self._cond:
            self._items.clear()

    def wait_for(self, count: int, timeout: float) -> list[SimRequest]:
        """Wait until at least ``count`` requests were recorded (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._items) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self._items)

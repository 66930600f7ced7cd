"""Per-key rate limits: requests and tokens per minute, in-process sliding windows.

Each proxy process enforces the limits for the traffic it sees (run one process per key set,
or accept N x the limit across N processes; Redis-backed windows are future work).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

WINDOW_SECONDS = 60.0


class SlidingWindow:
    """Weighted events in the last minute, per key. Thread-safe; memory bounded by traffic
    in the window (old entries are pruned on every touch)."""

    def __init__(self, window: float = WINDOW_SECONDS) -> None:
        self._window = window
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._totals: dict[str, int] = {}
        self._lock = threading.Lock()

    def _prune(self, key: str, now: float) -> deque[tuple[float, int]]:
        q = self._events.setdefault(key, deque())
        while q and q[0][0] <= now - self._window:
            _, weight = q.popleft()
            self._totals[key] -= weight
        return q

    def try_acquire(self, key: str, limit: int, weight: int = 1,
                    now: float | None = None) -> int | None:
        """Count ``weight`` if it fits under ``limit``; else return seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._prune(key, now)
            total = self._totals.setdefault(key, 0)
            if total + weight <= limit or (not q and weight > limit):
                # A single request heavier than the whole limit passes when the window is
                # empty; refusing it forever would be worse than letting it through once.
                q.append((now, weight))
                self._totals[key] = total + weight
                return None
            # Wait until enough weight has left the window.
            need, freed = total + weight - limit, 0
            for ts, w in q:
                freed += w
                if freed >= need:
                    return max(1, math.ceil(ts + self._window - now))
            return max(1, math.ceil(self._window))

    def add(self, key: str, weight: int, now: float | None = None) -> None:
        """Count weight after the fact (actual tokens once known)."""
        if weight <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._prune(key, now)
            q.append((now, weight))
            self._totals[key] = self._totals.get(key, 0) + weight

"""Per-key rate limits: requests and tokens per minute over an exact sliding window.

Two windows with one interface — ``try_acquire(key, limit, weight=1)`` returns None when the
weight was counted, else the seconds to wait (429's ``Retry-After``); ``add(key, weight)``
counts weight after the fact (actual tokens once known):

- :class:`SlidingWindow` (default): in-process. Each proxy process enforces the limits for the
  traffic it sees; N processes allow up to N x the limit.
- :class:`RedisWindow` (``auth.redis_url`` or the variable ``auth.redis_url_env`` names): one
  window per key shared by every proxy process. Each call is one Lua script, atomic in Redis:
  prune the events older than the window, compare the sum with the limit, add the event. The
  time is the Redis server's (``TIME`` inside the script), so the proxies' clocks never
  matter. A key's window is a ZSET ``hushgate:rl:<rpm|tpm>:{<key id>}`` (score = server time in
  ms, member = ``<random event id>:<weight>``) and its running sum ``…:sum``: only the key id,
  which is public metadata, never key material. Both get ``PEXPIRE`` = the window on every
  write, so an idle key vanishes and a ZSET never holds more than one window's events. The
  calls block (socket timeouts 0.25 s): the pipeline runs them on the worker threads
  (:meth:`proxy_addons.services.Services.acquire` / ``count``), never on the event loop.

Degraded mode: when Redis is unreachable, too slow or answers with an error, no request is
refused for it and the call is not retried: the window falls back to its in-process
:class:`SlidingWindow`, so each process still enforces the limits on its own traffic (as
without Redis). Every event counted in Redis is mirrored there, so the fallback starts with
this process's last minute. An outage logs one warning (the error's class name only: never
the URL, which may carry a password, nor a key), then at most one call every 5 s probes Redis
(and may wait up to the 0.25 s timeout); the shared window resumes as soon as a probe
succeeds. Limits are a safeguard, not billing (the wallet lives in the database): falling
back to per-process limits beats refusing every request while Redis is down.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("hushgate.proxy")

WINDOW_SECONDS = 60.0
KEY_PREFIX = "hushgate:rl"
REDIS_TIMEOUT_SECONDS = 0.25
REDIS_RETRY_SECONDS = 5.0


class RateWindow(Protocol):
    #: True when the calls do network I/O: the pipeline runs them on a worker thread.
    blocking: bool

    def try_acquire(self, key: str, limit: int, weight: int = 1) -> int | None: ...

    def add(self, key: str, weight: int) -> None: ...


class SlidingWindow:
    """Weighted events in the last minute, per key. Thread-safe; memory bounded by traffic
    in the window (old entries are pruned on every touch)."""

    blocking = False

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


# KEYS[1]: the events (ZSET: score = Redis server time in ms, member = "<id>:<weight>")
# KEYS[2]: the sum of their weights
# ARGV: window ms, limit (-1: count unconditionally), weight, event id
# Returns -1 when the weight was counted, else the ms until enough weight has left.
# Numbers go back to Redis as strings formatted with %.0f: Lua's default (%.14g) would round.
WINDOW_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local events, sum_key = KEYS[1], KEYS[2]
local window, limit, weight = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function weight_of(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end
local count, total, pruned = redis.call('ZCARD', events), 0, 0
if count > 0 then
  local stored = redis.call('GET', sum_key)
  if stored then
    total = tonumber(stored)
  else  -- the sum was evicted: count it again
    for _, m in ipairs(redis.call('ZRANGE', events, 0, -1)) do total = total + weight_of(m) end
  end
  local cutoff = string.format('%.0f', now - window)
  local expired = redis.call('ZRANGEBYSCORE', events, '-inf', cutoff)
  pruned = #expired
  if pruned > 0 then
    for _, m in ipairs(expired) do total = total - weight_of(m) end
    redis.call('ZREMRANGEBYSCORE', events, '-inf', cutoff)
    count = count - pruned
  end
  if count <= 0 or total < 0 then total = 0 end
end
if limit < 0 or total + weight <= limit or (count == 0 and weight > limit) then
  -- (a single request heavier than the whole limit passes when the window is empty)
  redis.call('ZADD', events, string.format('%.0f', now), ARGV[4] .. ':' .. ARGV[3])
  redis.call('SET', sum_key, string.format('%.0f', total + weight), 'PX', ARGV[1])
  redis.call('PEXPIRE', events, ARGV[1])
  return -1
end
if pruned > 0 then
  redis.call('SET', sum_key, string.format('%.0f', total), 'PX', ARGV[1])
  redis.call('PEXPIRE', events, ARGV[1])
end
local need, freed, start = total + weight - limit, 0, 0
while start < count do
  local batch = redis.call('ZRANGE', events, start, start + 127, 'WITHSCORES')
  for i = 1, #batch, 2 do
    freed = freed + weight_of(batch[i])
    if freed >= need then return tonumber(batch[i + 1]) + window - now end
  end
  start = start + 128
end
return window
"""


class RedisLink:
    """The Redis connection pool the RPM and TPM windows share, and its health.

    Healthy, every call goes to Redis. After a failure: one warning for the whole outage;
    the windows use their fallback, and at most one call every ``retry_seconds`` probes
    Redis again. Only the error's class name is logged (never the URL: it may carry a
    password)."""

    def __init__(self, url: str, *, timeout: float = REDIS_TIMEOUT_SECONDS,
                 retry_seconds: float = REDIS_RETRY_SECONDS, observer: Any = None) -> None:
        import redis  # imported only when shared limits are configured (~250 ms)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0))  # a failure falls back at once; no retry storms
        self._script = self._client.register_script(WINDOW_SCRIPT)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.retry_seconds = retry_seconds
        self.observer = observer  # proxy_addons.observer: told of every failed call
        self._lock = threading.Lock()
        self._down = False
        self._probe_at = 0.0

    def run(self, keys: list[str], args: list[Any]) -> int | None:
        """The window script's answer, or None when Redis is unavailable."""
        answer = self._call(lambda: self._script(keys=keys, args=args))
        return None if answer is None else int(answer)

    def check(self) -> bool:
        """Ping Redis (at start, so a bad URL or password is reported before any request)."""
        return self._call(self._client.ping) is not None

    def _call(self, fn: Callable[[], Any]) -> Any:
        probe = self._down
        if probe and not self._may_probe():
            return None
        try:
            answer = fn()
        except self._errors as exc:
            if self.observer is not None:
                from proxy_addons.observer import call

                call(self.observer, "redis_error")
            self._failed(exc)
            return None
        if probe:  # only a probe ends an outage, so a flapping Redis can't spam warnings
            self._recovered()
        return answer

    def _may_probe(self) -> bool:
        """While down: True for one caller every ``retry_seconds`` (the others fall back)."""
        with self._lock:
            now = time.monotonic()
            if now >= self._probe_at:
                self._probe_at = now + self.retry_seconds
                return True
            return False

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._probe_at = time.monotonic() + self.retry_seconds
            if self._down:
                return
            self._down = True
        log.warning("shared rate limits: Redis unavailable (%s); enforcing per-process limits,"
                    " retrying every %g s", type(exc).__name__, self.retry_seconds)

    def _recovered(self) -> None:
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            log.info("shared rate limits: Redis is back; limits are shared again")

    @property
    def down(self) -> bool:
        return self._down

    def close(self) -> None:
        self._client.close()


class RedisWindow:
    """The :class:`SlidingWindow` interface over Redis, shared by every proxy process; the
    in-process ``fallback`` while Redis is unavailable (see the module docstring)."""

    blocking = True

    def __init__(self, link: RedisLink, kind: str, *, window: float = WINDOW_SECONDS,
                 prefix: str = KEY_PREFIX) -> None:
        self._link = link
        self._window_ms = max(1, round(window * 1000))
        self._prefix = f"{prefix}:{kind}:"
        self.fallback = SlidingWindow(window)

    def keys(self, key: str) -> list[str]:
        """The Redis keys of ``key``'s window: the events and their sum."""
        name = f"{self._prefix}{{{key}}}"  # {hash tag}: both keys in one Redis Cluster slot
        return [name, name + ":sum"]

    def _run(self, key: str, limit: int, weight: int) -> int | None:
        return self._link.run(self.keys(key),
                              [self._window_ms, limit, weight, secrets.token_hex(8)])

    def try_acquire(self, key: str, limit: int, weight: int = 1) -> int | None:
        """Count ``weight`` if it fits under ``limit``; else return seconds to wait."""
        answer = self._run(key, limit, weight)
        if answer is None:
            return self.fallback.try_acquire(key, limit, weight)
        if answer < 0:
            self.fallback.add(key, weight)
            return None
        return max(1, math.ceil(min(answer, self._window_ms) / 1000))

    def add(self, key: str, weight: int) -> None:
        """Count weight after the fact (actual tokens once known)."""
        if weight <= 0:
            return
        self._run(key, -1, weight)
        self.fallback.add(key, weight)  # mirrored in-process, or counted there if Redis is down

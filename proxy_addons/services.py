"""What the Gateway's stages share: configuration, database, authenticator, limits, money.

Built once per proxy process by :func:`build_services`; nothing happens at import time.
:meth:`Services.start` registers the process (``control.core.proxy_money.ProxyMoney``:
instance, journal replay, group committer, heartbeat/lease thread) and starts the key
poller; :meth:`Services.close` commits what is queued, returns the leases, deregisters.
Blocking work (bcrypt on a key's first use, per-request holds, the shared rate limits' Redis
round trips) runs on ``executor`` (sized like the connection pool) so a slow query never
stalls the event loop; a cached key and a reservation inside a lease need neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from control.core.config import Config
from control.core.db import Database
from control.core.keys import KeyAuthenticator
from control.core.proxy_money import ProxyMoney
from proxy_addons.limits import RateWindow, RedisLink, RedisWindow, SlidingWindow
from proxy_addons.observer import call

T = TypeVar("T")


@dataclass
class Services:
    config: Config
    db: Database
    authenticator: KeyAuthenticator
    money: ProxyMoney
    executor: ThreadPoolExecutor
    rpm: RateWindow = field(default_factory=SlidingWindow)
    tpm: RateWindow = field(default_factory=SlidingWindow)
    redis: RedisLink | None = None  # the shared windows' connection (auth.redis_url)
    privacy_key: bytes = b""
    owns_db: bool = True
    write_lock: contextlib.AbstractContextManager[Any] = field(
        default_factory=contextlib.nullcontext)
    in_flight: int = 0  # flows with state and no record yet (event-loop thread only)
    holds: int = 0  # of which holding funds (event-loop thread only)
    observer: Any = None  # see proxy_addons.observer (NullObserver by default)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (bcrypt, SQL) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def acquire(self, window: RateWindow, key_id: str, limit: int,
                      weight: int = 1) -> int | None:
        """Count ``weight`` against a rate window: None, or the seconds to wait (429).
        The shared (Redis) window's round trip runs on a worker thread."""
        if window.blocking:
            return await self.blocking(window.try_acquire, key_id, limit, weight)
        return window.try_acquire(key_id, limit, weight)

    def count(self, window: RateWindow, key_id: str, weight: int) -> None:
        """Count weight after the fact without waiting for it (Redis: on a worker thread)."""
        if weight <= 0:
            return
        if window.blocking:
            self.executor.submit(window.add, key_id, weight)
        else:
            window.add(key_id, weight)

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[Session]:
        """A write transaction, serialized in-process on SQLite (see :func:`write_lock_for`)."""
        with self.write_lock, self.db.transaction() as session:
            yield session

    def client_ip(self, peer: str | None) -> str | None:
        return privacy_ip(self.config.privacy.get("client_ip", "off"), peer, self.privacy_key)

    def user_agent(self, ua: str | None) -> str | None:
        if self.config.privacy.get("user_agent", "off") != "hashed" or not ua:
            return None
        return hmac.new(self.privacy_key, ua.encode("utf-8", "replace"),
                        hashlib.sha256).hexdigest()[:16]

    started: bool = False

    def start(self) -> Services:
        """Register this process and start its background work (idempotent)."""
        if not self.started:
            self.money.start()
            self.authenticator.start()
            self.started = True
        return self

    @property
    def alive(self) -> bool:
        """The money path can make outcomes durable (the health check reports it)."""
        return self.started and self.money.alive

    def close(self) -> None:
        if self.started:
            self.money.close()
            self.authenticator.stop()
            self.started = False
        self.executor.shutdown(wait=True, cancel_futures=False)
        if self.redis is not None:
            self.redis.close()
        if self.owns_db:
            self.db.dispose()


def privacy_ip(mode: str, peer: str | None, key: bytes) -> str | None:
    """The client IP as ``privacy.client_ip`` allows: off, truncated (/24, /48) or hashed."""
    if mode == "off" or not peer:
        return None
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if mode == "hashed":
        return "h:" + hmac.new(key, ip.packed, hashlib.sha256).hexdigest()[:32]
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def write_lock_for(db: Database) -> contextlib.AbstractContextManager[Any]:
    """The lock every proxy write transaction takes: one per process on SQLite, none else.

    SQLite has a single writer and every write transaction starts with ``BEGIN IMMEDIATE``.
    Without this lock, concurrent holds and the group committer contend inside SQLite,
    whose busy handler retries by sleeping 1, 2, 5 ... 100 ms: profiled at 32 clients, the
    worker threads spent most of their time asleep in ``BEGIN IMMEDIATE`` and p99 latency
    was ~60 ms. Queued on a Python lock, the next writer starts as soon as the previous one
    commits. Other processes on the same file still go through SQLite's
    busy handler; PostgreSQL needs no lock (row locks order the updates).
    """
    return threading.Lock() if db.dialect == "sqlite" else contextlib.nullcontext()


def rate_windows(redis_url: str | None, observer: Any = None
                 ) -> tuple[RateWindow, RateWindow, RedisLink | None]:
    """The RPM and TPM windows: shared by every proxy through Redis if ``auth.redis_url``."""
    if not redis_url:
        return SlidingWindow(), SlidingWindow(), None
    link = RedisLink(redis_url, observer=observer)
    link.check()  # a bad URL or password is reported at start, not at the first request
    return RedisWindow(link, "rpm"), RedisWindow(link, "tpm"), link


def build_services(config: Config, db: Database | None = None,
                   observer: Any = None) -> Services:
    """Everything the Gateway needs, from the configuration."""
    from proxy_addons.observer import NullObserver

    observer = observer if observer is not None else NullObserver()
    owns = db is None
    db = db or Database.from_config(config)
    auth = config.auth
    authenticator = KeyAuthenticator(
        db.readers, bcrypt_cost=auth["bcrypt_cost"], ttl_seconds=auth["key_cache_ttl_seconds"],
        poll_seconds=auth["revocation_poll_ms"] / 1000)
    authenticator.on_revocation = lambda seconds: call(observer, "revocation_seen", seconds)
    proxy = config.proxy
    lock = write_lock_for(db)
    journal = (config.data_dir / "outcomes") if proxy["outcome_journal"] else None
    money = ProxyMoney(db, config, journal_dir=journal, write_lock=lock,
                       max_batch=proxy["record_batch_size"],
                       max_wait_ms=proxy["record_flush_ms"])
    money.on_commit(_committed(observer, proxy["records_jsonl"], money))
    workers = max(4, config.raw["database"]["pool_size"])
    rpm, tpm, link = rate_windows(config.redis_url, observer)
    key = b""
    privacy = config.privacy
    if privacy.get("client_ip") == "hashed" or privacy.get("user_agent") == "hashed":
        key = hmac.new(config.audit_hmac_key(), b"hushgate:privacy", hashlib.sha256).digest()
    return Services(config=config, db=db, authenticator=authenticator, money=money,
                    executor=ThreadPoolExecutor(workers, thread_name_prefix="hushgate-db"),
                    rpm=rpm, tpm=tpm, redis=link, privacy_key=key, owns_db=owns,
                    write_lock=lock, observer=observer)


def _committed(observer: Any, jsonl: str | None, money: ProxyMoney
               ) -> Callable[[list[dict[str, Any]]], None]:
    """After each committed batch (committer thread): the final records go to the observer
    and, if ``proxy.records_jsonl`` is set, are appended to that file (0600)."""
    import json
    import os

    def done(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            call(observer, "request_finished", row)
        committer = money.committer
        call(observer, "writer_queue", committer.pending, committer.oldest_wait)
        if jsonl:
            fd = os.open(jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, separators=(",", ":"), sort_keys=True,
                                        default=str) + "\n")

    return done

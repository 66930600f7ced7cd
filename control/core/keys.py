"""API keys: format, issue, revoke, rotate, and authenticate.

Format (like GitHub/Stripe tokens)::

    hg_<key id: 12 base62>_<secret: 32 base62><checksum: 6 base62 of CRC32>

54 bytes, under bcrypt's 72-byte limit. Admin API tokens use the prefix ``hga_``. A wrong
prefix, length, alphabet or checksum is refused before any database or bcrypt work. Only a
bcrypt hash of the secret is stored; the full key is returned once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import string
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import bcrypt
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control.core import notify
from control.core.audit import Action
from control.core.base import utcnow
from control.core.context import Ctx
from control.core.errors import (
    AccountInactive,
    InvalidKey,
    KeyExpired,
    KeyRevoked,
    NotFound,
    ValidationError,
)
from control.core.models import Account, ApiKey, ChangeCounter

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
ACCOUNT_PREFIX = "hg"
ADMIN_PREFIX = "hga"
ID_LEN, SECRET_LEN, CRC_LEN = 12, 32, 6
_KEY_RE = re.compile(r"^(hg|hga)_([0-9A-Za-z]{12})_([0-9A-Za-z]{32})([0-9A-Za-z]{6})$")
MAX_KEY_CHARS = 80  # anything longer is not one of ours; refuse before any work
MAX_LIMIT = 10_000_000

log = logging.getLogger("hushgate.keys")


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def _random_b62(n: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(n))


def checksum(body: str) -> str:
    return _b62(zlib.crc32(body.encode()), CRC_LEN)


@dataclass(frozen=True)
class ParsedKey:
    prefix: str
    key_id: str
    secret: str


def generate(prefix: str = ACCOUNT_PREFIX) -> tuple[str, ParsedKey]:
    """A new random key and its parts."""
    key_id, secret = _random_b62(ID_LEN), _random_b62(SECRET_LEN)
    body = f"{prefix}_{key_id}_{secret}"
    return body + checksum(body), ParsedKey(prefix, key_id, secret)


def parse(raw: str | None, prefix: str = ACCOUNT_PREFIX) -> ParsedKey:
    """Check format and checksum only (no I/O). Raises InvalidKey."""
    if not raw or len(raw) > MAX_KEY_CHARS:
        raise InvalidKey("invalid API key")
    m = _KEY_RE.match(raw)
    if not m or m.group(1) != prefix:
        raise InvalidKey("invalid API key")
    body = raw[: -CRC_LEN]
    if not hmac.compare_digest(checksum(body), m.group(4)):
        raise InvalidKey("invalid API key")
    return ParsedKey(m.group(1), m.group(2), m.group(3))


def display_prefix(parsed: ParsedKey) -> str:
    """What lists show: enough to recognise a key, nothing that helps guess it."""
    return f"{parsed.prefix}_{parsed.key_id}_…"


def hash_secret(secret: str, cost: int) -> str:
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=cost)).decode()


def bump_keys_counter(session: Session) -> None:
    """Tell every proxy process that some key or account changed (seen within ~1 s)."""
    session.execute(update(ChangeCounter).where(ChangeCounter.name == "keys")
                    .values(value=ChangeCounter.value + 1))


# -- administrative services ----------------------------------------------------------------


def _validate_scopes(ctx: Ctx, allowed_models: list[str] | None, expires_at: datetime | None,
                     rpm_limit: int | None, tpm_limit: int | None, budget: int | None) -> None:
    if allowed_models is not None:
        if not allowed_models:
            raise ValidationError("allowed models must name at least one model", "models")
        unknown = [m for m in allowed_models if m not in ctx.config.models]
        if unknown:
            raise ValidationError(f"unknown model {unknown[0]!r} in scope", "models")
    if expires_at is not None and expires_at <= utcnow():
        raise ValidationError("expiry is in the past", "expires_at")
    for name, value in (("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit)):
        if value is not None and not (0 < value <= MAX_LIMIT):
            raise ValidationError(f"{name} must be between 1 and {MAX_LIMIT}", name)
    if budget is not None and not (0 < budget <= ctx.config.wallet["max_amount"]):
        raise ValidationError("budget must be positive and below the maximum amount", "budget")


def create_key(ctx: Ctx, account_id: str, *, name: str | None = None,
               allowed_models: list[str] | None = None, expires_at: datetime | None = None,
               rpm_limit: int | None = None, tpm_limit: int | None = None,
               budget: int | None = None, rotated_from: str | None = None) -> tuple[ApiKey, str]:
    """Issue a key. Returns the row and the full key, which is never available again."""
    account = ctx.session.get(Account, account_id)
    if account is None:
        raise NotFound(f"unknown account {account_id}")
    if account.status != "active":
        raise ValidationError(f"account {account_id} is {account.status}", "account")
    if name is not None and len(name) > 100:
        raise ValidationError("key name is longer than 100 characters", "name")
    _validate_scopes(ctx, allowed_models, expires_at, rpm_limit, tpm_limit, budget)
    raw, parsed = generate(ACCOUNT_PREFIX)
    key = ApiKey(key_id=parsed.key_id, account_id=account_id, name=name,
                 display_prefix=display_prefix(parsed),
                 secret_hash=hash_secret(parsed.secret, ctx.config.auth["bcrypt_cost"]),
                 allowed_models=allowed_models, expires_at=expires_at, rpm_limit=rpm_limit,
                 tpm_limit=tpm_limit, budget=budget, rotated_from=rotated_from)
    ctx.session.add(key)
    ctx.session.flush()
    ctx.audit(Action.KEY_CREATED, "key", key.key_id, account_id=account_id,
              models=allowed_models, expires_at=expires_at.isoformat() if expires_at else None,
              rpm_limit=rpm_limit, tpm_limit=tpm_limit, budget=budget)
    notify.send(ctx.session, ctx.config, account_id, "key_created", key_id=key.key_id)
    return key, raw


def list_keys(session: Session, account_id: str | None = None,
              include_revoked: bool = True) -> list[ApiKey]:
    q = select(ApiKey).order_by(ApiKey.created_at)
    if account_id:
        q = q.where(ApiKey.account_id == account_id)
    if not include_revoked:
        q = q.where(ApiKey.status == "active")
    return list(session.scalars(q))


def get_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id) if key_id and len(key_id) <= 16 else None
    if key is None:
        raise NotFound(f"unknown key {key_id[:20]}")
    return key


def revoke_key(ctx: Ctx, key_id: str, *, reason: str | None = None) -> ApiKey:
    """Revoke now. Every proxy stops accepting it within ~1 s (the keys change counter)."""
    key = get_key(ctx.session, key_id)
    if key.status == "revoked":
        return key
    key.status, key.revoked_at = "revoked", utcnow()
    bump_keys_counter(ctx.session)
    ctx.session.flush()
    ctx.audit(Action.KEY_REVOKED, "key", key.key_id, account_id=key.account_id, reason=reason)
    notify.send(ctx.session, ctx.config, key.account_id, "key_revoked", key_id=key.key_id)
    return key


def rotate_key(ctx: Ctx, key_id: str, *, grace_seconds: int = 0) -> tuple[ApiKey, str]:
    """Issue a replacement with the same scopes; the old key dies now or after the grace."""
    old = get_key(ctx.session, key_id)
    if old.status != "active":
        raise ValidationError(f"key {key_id} is revoked and cannot be rotated", "key")
    if not (0 <= grace_seconds <= 30 * 86400):
        raise ValidationError("grace period must be between 0 and 30 days", "grace")
    expires = old.expires_at if old.expires_at and old.expires_at > utcnow() else None
    new, raw = create_key(ctx, old.account_id, name=old.name, allowed_models=old.allowed_models,
                          expires_at=expires, rpm_limit=old.rpm_limit, tpm_limit=old.tpm_limit,
                          budget=old.budget, rotated_from=old.key_id)
    if grace_seconds:
        old.revoke_at = utcnow() + timedelta(seconds=grace_seconds)
    else:
        old.status, old.revoked_at = "revoked", utcnow()
    bump_keys_counter(ctx.session)
    ctx.session.flush()
    ctx.audit(Action.KEY_ROTATED, "key", old.key_id, account_id=old.account_id,
              new_key_id=new.key_id, grace_seconds=grace_seconds)
    return new, raw


def key_dict(key: ApiKey) -> dict[str, object]:
    """Key metadata for lists, exports and the API — never the hash or the secret."""
    return {
        "key_id": key.key_id, "account_id": key.account_id, "name": key.name,
        "prefix": key.display_prefix, "status": key.status,
        "allowed_models": key.allowed_models,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "rpm_limit": key.rpm_limit, "tpm_limit": key.tpm_limit, "budget": key.budget,
        "spent": key.spent, "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "revoke_at": key.revoke_at.isoformat() if key.revoke_at else None,
        "rotated_from": key.rotated_from,
    }


# -- authentication (the proxy's hot path) --------------------------------------------------


@dataclass(frozen=True)
class KeyPrincipal:
    """What the proxy knows about an authenticated key."""

    key_id: str
    account_id: str
    allowed_models: tuple[str, ...] | None
    expires_at: datetime | None
    revoke_at: datetime | None
    rpm_limit: int | None
    tpm_limit: int | None
    budget: int | None

    def check_time(self, now: datetime) -> None:
        if self.revoke_at is not None and now >= self.revoke_at:
            raise KeyRevoked("API key has been revoked")
        if self.expires_at is not None and now >= self.expires_at:
            raise KeyExpired("API key has expired")

    def allows_model(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


#: A cached key is served only while the last completed poll of the change counter started
#: less than ``min(MAX_STALENESS, 3 x poll_seconds)`` ago; otherwise the request takes the
#: slow path, which polls. So a change committed at T is honoured by every process from
#: T + MAX_STALENESS on, whatever the load or the poller's luck (revocation within 2 s).
MAX_STALENESS = 1.5
#: Bound on cached keys; the oldest entry goes first when it is full.
MAX_ENTRIES = 100_000
_REVALIDATE_CHUNK = 500


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: KeyPrincipal
    secret_hash: str  # the bcrypt hash this key's secret was verified against
    generation: int | None  # the change counter this entry is known to be current for
    revoked: bool = False  # terminal: a revoked key never becomes active again


def _principal(key: ApiKey) -> KeyPrincipal:
    return KeyPrincipal(
        key_id=key.key_id, account_id=key.account_id,
        allowed_models=tuple(key.allowed_models) if key.allowed_models else None,
        expires_at=key.expires_at, revoke_at=key.revoke_at, rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit, budget=key.budget)


class KeyAuthenticator:
    """Verifies a key with bcrypt once, then serves it from memory until it changes.

    The cache is keyed by an HMAC of the full key under a per-process random pepper, never
    by the key. Only successes are cached, and revocations of a verified key (final, so a
    revoked key costs no bcrypt either). Unknown key ids pay a dummy bcrypt verify, so
    timing doesn't tell an unknown id from a wrong secret.

    Every change to a key or an account bumps the ``keys`` change counter in the same
    transaction. Entries carry the counter value ("generation") they are known current for.
    A poll (:meth:`poll`: the poller thread of :meth:`start`, or inline on the slow path)
    reads the counter and, when it moved, re-reads the rows of every cached key in one query
    and drops the ones revoked, expired, re-hashed or whose account is no longer active —
    no bcrypt: the secret was already verified against the same hash. An unchanged key
    therefore never pays bcrypt again, and there is no wall-clock TTL.

    - :meth:`cached` is the fast path: a dict lookup, no database, no lock wait, no thread
      hop (call it on the event loop). It returns None when the key isn't cached, its
      generation is not the current one, or the last poll is older than
      :data:`MAX_STALENESS` — then call :meth:`authenticate` (blocking, on a thread).
    - :meth:`authenticate` reads the counter *before* the row and again *after* the bcrypt
      check; if it moved, the row is read again before anything is cached, so a revocation
      that lands during a verification is never cached as a success.

    Thread-safe. ``ttl_seconds`` is accepted for compatibility and ignored.
    """

    def __init__(self, session_factory, *, bcrypt_cost: int = 12, ttl_seconds: float = 60,
                 poll_seconds: float = 0.5, prefix: str = ACCOUNT_PREFIX,
                 max_entries: int = MAX_ENTRIES) -> None:
        del ttl_seconds  # entries expire by generation, not by time
        self._session_factory = session_factory
        self._poll_every = min(poll_seconds, MAX_STALENESS / 2)
        # Serve from memory only while the last poll is this recent (0: always poll first).
        self._staleness = min(MAX_STALENESS, 3 * poll_seconds)
        self._prefix = prefix
        self._max_entries = max_entries
        self._pepper = secrets.token_bytes(32)
        self._cache: dict[bytes, _Entry] = {}
        self._lock = threading.Lock()  # guards writes to _cache / _generation
        self._poll_lock = threading.Lock()  # one poll at a time
        self._generation: int | None = None
        self._fresh_at = -math.inf  # monotonic start of the last completed poll
        self._dummy_hash = bcrypt.hashpw(b"x" * SECRET_LEN, bcrypt.gensalt(rounds=bcrypt_cost))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bcrypt_checks = 0  # counted, for tests and metrics
        #: Called (poller thread) with the seconds from a cached key's revocation to this
        #: process refusing it: the propagation delay operators watch (a metric).
        self.on_revocation: Callable[[float], None] | None = None

    def fingerprint(self, raw: str) -> bytes:
        """An HMAC of the key under a per-process random pepper: the cache key (never the key
        itself), also used by the proxy to share one check among concurrent requests."""
        return hmac.new(self._pepper, raw.encode(), hashlib.sha256).digest()

    # -- the background poller ------------------------------------------------------------

    def start(self) -> KeyAuthenticator:
        """Poll in a daemon thread, so the fast path stays fresh without any request
        waiting on the database."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="hushgate-key-poller",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - stale cache falls back to the slow path
                log.warning("hushgate: key change poll failed (%s)", type(exc).__name__)
            self._stop.wait(self._poll_every)

    def poll(self, session: Session | None = None) -> None:
        """Read the change counter; if it moved, revalidate every cached key (no bcrypt)."""
        with self._poll_lock:
            started = time.monotonic()
            if session is None:
                with self._session_factory() as own:
                    self._poll_with(own, started)
            else:
                self._poll_with(session, started)

    def _poll_with(self, session: Session, started: float) -> None:
        value = _counter(session)
        if value == self._generation:
            self._fresh_at = started
            return
        snapshot = dict(self._cache)
        rows: dict[str, tuple[ApiKey, str]] = {}
        ids = sorted({e.principal.key_id for e in snapshot.values()})
        for i in range(0, len(ids), _REVALIDATE_CHUNK):
            for key, account_status in session.execute(
                    select(ApiKey, Account.status).join(Account, Account.id == ApiKey.account_id)
                    .where(ApiKey.key_id.in_(ids[i:i + _REVALIDATE_CHUNK]))):
                rows[key.key_id] = (key, account_status)
        revoked_at: list[datetime] = []
        with self._lock:
            for fp, entry in snapshot.items():
                if self._cache.get(fp) is not entry:
                    continue  # replaced meanwhile by a fresher check
                row = rows.get(entry.principal.key_id)
                fresh = self._current(entry, row, value)
                if fresh is None:
                    del self._cache[fp]
                else:
                    self._cache[fp] = fresh
                if (row is not None and fresh is not None and fresh.revoked
                        and not entry.revoked and row[0].revoked_at is not None):
                    revoked_at.append(row[0].revoked_at)
            self._generation = value
        self._fresh_at = started
        if revoked_at and self.on_revocation is not None:
            now = utcnow()
            for when in revoked_at:
                self.on_revocation((now - when).total_seconds())

    @staticmethod
    def _current(entry: _Entry, row: tuple[ApiKey, str] | None,
                 generation: int | None) -> _Entry | None:
        """The entry refreshed from its row, or None if the key may no longer be used."""
        if row is None:
            return None
        key, account_status = row
        if key.secret_hash != entry.secret_hash:
            return None
        if key.status == "revoked":  # remembered, so a revoked key costs no bcrypt either
            return _Entry(entry.principal, entry.secret_hash, generation, revoked=True)
        if account_status != "active":
            return None
        return _Entry(_principal(key), entry.secret_hash, generation)

    def invalidate(self) -> None:
        """Forget every cached success (e.g. on a pub/sub notice)."""
        with self._lock:
            self._cache.clear()

    # -- the two paths ----------------------------------------------------------------------

    def cached(self, raw: str | None) -> KeyPrincipal | None:
        """The fast path: the principal of a cached, current key, or None (then call
        :meth:`authenticate`). Raises InvalidKey for a malformed key and KeyExpired /
        KeyRevoked when a cached key's expiry or rotation grace has passed. No I/O."""
        parse(raw, self._prefix)
        assert raw is not None
        entry = self._cache.get(self.fingerprint(raw))
        if entry is not None and entry.revoked:
            raise KeyRevoked("API key has been revoked")
        if (entry is None or entry.generation is None or entry.generation != self._generation
                or time.monotonic() - self._fresh_at > self._staleness):
            return None
        entry.principal.check_time(utcnow())
        return entry.principal

    def authenticate(self, raw: str | None) -> KeyPrincipal:
        """Return the principal for a valid key or raise an InvalidKey subclass. Blocking
        (database, and bcrypt the first time a key is seen)."""
        hit = self.cached(raw)
        if hit is not None:
            return hit
        parsed = parse(raw, self._prefix)
        assert raw is not None
        fp = self.fingerprint(raw)
        with self._session_factory() as session:
            if time.monotonic() - self._fresh_at > self._staleness:
                self.poll(session)
            generation = _counter(session)
            row = _key_row(session, parsed.key_id)
            session.rollback()  # end the read snapshot (SQLite) before the slow check
            stored = row.secret_hash if row else None
            known = self._cache.get(fp)
            if not (stored and known is not None and known.secret_hash == stored):
                self.bcrypt_checks += 1
                ok = bcrypt.checkpw(parsed.secret.encode(),
                                    stored.encode() if stored else self._dummy_hash)
                if not (stored and ok):
                    raise InvalidKey("invalid API key")
            # The counter again, after the (slow) check, in a new snapshot: a change that
            # landed meanwhile means the row may be stale; read it again before trusting it.
            for _ in range(5):
                now_generation = _counter(session)
                if now_generation == generation:
                    break
                generation = now_generation
                row = _key_row(session, parsed.key_id)
                session.rollback()
            else:
                generation = None  # still changing: answer from the latest row, cache nothing
        if row is None or row.secret_hash != stored:
            raise InvalidKey("invalid API key")
        if row.status != "active":
            with self._lock:  # the secret is right and revocation is final: remember it
                self._cache[fp] = _Entry(row.principal, stored, generation, revoked=True)
            raise KeyRevoked("API key has been revoked")
        if row.account_status != "active":
            raise AccountInactive("the account of this API key is not active")
        row.principal.check_time(utcnow())
        assert stored is not None
        with self._lock:
            if len(self._cache) >= self._max_entries and fp not in self._cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[fp] = _Entry(row.principal, stored, generation)
        return row.principal


@dataclass(frozen=True, slots=True)
class _KeyRow:
    principal: KeyPrincipal
    secret_hash: str | None
    status: str
    account_status: str


def _key_row(session: Session, key_id: str) -> _KeyRow | None:
    """A key's row and its account's status, as plain values (read fresh, never from the
    session's identity map)."""
    row = session.execute(
        select(ApiKey, Account.status).join(Account, Account.id == ApiKey.account_id)
        .where(ApiKey.key_id == key_id).execution_options(populate_existing=True)).first()
    if row is None:
        return None
    key, account_status = row
    return _KeyRow(_principal(key), key.secret_hash, key.status, account_status)


def _counter(session: Session) -> int | None:
    return session.scalar(select(ChangeCounter.value).where(ChangeCounter.name == "keys"))

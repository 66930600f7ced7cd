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
import re
import secrets
import string
import threading
import time
import zlib
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


class KeyAuthenticator:
    """Verifies keys with bcrypt once, then serves successes from memory for ``ttl`` seconds.

    The cache is keyed by an HMAC of the full key under a per-process random pepper, never
    by the key. Only successes are cached. Unknown key ids pay a dummy bcrypt verify, so
    timing doesn't tell an unknown id from a wrong secret. Any change to keys or accounts
    bumps a counter in the database; it is polled at most every ``poll_seconds`` and a change
    empties the cache, so revocation from another process is seen within that interval.
    Thread-safe: the proxy calls it from worker threads.
    """

    def __init__(self, session_factory, *, bcrypt_cost: int = 12, ttl_seconds: float = 60,
                 poll_seconds: float = 1.0, prefix: str = ACCOUNT_PREFIX) -> None:
        self._session_factory = session_factory
        self._ttl = ttl_seconds
        self._poll = poll_seconds
        self._prefix = prefix
        self._pepper = secrets.token_bytes(32)
        self._cache: dict[bytes, tuple[float, KeyPrincipal]] = {}
        self._lock = threading.Lock()
        self._counter: int | None = None
        self._polled_at = 0.0
        self._dummy_hash = bcrypt.hashpw(b"x" * SECRET_LEN, bcrypt.gensalt(rounds=bcrypt_cost))

    def fingerprint(self, raw: str) -> bytes:
        """An HMAC of the key under a per-process random pepper: the cache key (never the key
        itself), also used by the proxy to share one check among concurrent requests."""
        return hmac.new(self._pepper, raw.encode(), hashlib.sha256).digest()

    def _refresh(self, session: Session) -> None:
        now = time.monotonic()
        if now - self._polled_at < self._poll:
            return
        value = session.scalar(select(ChangeCounter.value).where(ChangeCounter.name == "keys"))
        with self._lock:
            self._polled_at = now
            if value != self._counter:
                self._counter = value
                self._cache.clear()

    def invalidate(self) -> None:
        """Forget every cached success (e.g. on a pub/sub notice)."""
        with self._lock:
            self._cache.clear()

    def authenticate(self, raw: str | None) -> KeyPrincipal:
        """Return the principal for a valid key or raise an InvalidKey subclass. Blocking."""
        parsed = parse(raw, self._prefix)
        assert raw is not None
        fp = self.fingerprint(raw)
        with self._session_factory() as session:
            self._refresh(session)
            now = utcnow()
            with self._lock:
                hit = self._cache.get(fp)
            if hit is not None and time.monotonic() - hit[0] < self._ttl:
                hit[1].check_time(now)
                return hit[1]
            row = session.execute(
                select(ApiKey, Account.status).join(Account, Account.id == ApiKey.account_id)
                .where(ApiKey.key_id == parsed.key_id)).first()
            stored = row[0].secret_hash.encode() if row and row[0].secret_hash else None
            ok = bcrypt.checkpw(parsed.secret.encode(), stored or self._dummy_hash)
            if not (stored and ok):
                raise InvalidKey("invalid API key")
            key, account_status = row
            if key.status != "active":
                raise KeyRevoked("API key has been revoked")
            if account_status != "active":
                raise AccountInactive("the account of this API key is not active")
            principal = KeyPrincipal(
                key_id=key.key_id, account_id=key.account_id,
                allowed_models=tuple(key.allowed_models) if key.allowed_models else None,
                expires_at=key.expires_at, revoke_at=key.revoke_at, rpm_limit=key.rpm_limit,
                tpm_limit=key.tpm_limit, budget=key.budget)
        principal.check_time(now)
        with self._lock:
            self._cache[fp] = (time.monotonic(), principal)
        return principal

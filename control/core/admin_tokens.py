"""Admin API tokens: ``hga_<id>_<secret><crc>``, bcrypt-stored, scope ``read`` or ``write``.

Same format and rules as account keys (``control.core.keys``): the plaintext is returned once
at creation; lists show the display prefix. Verification reads the token row on every call
(so a revocation takes effect at once) but remembers a successful bcrypt check in memory,
keyed by an HMAC of the full token under a per-process pepper, so API calls don't pay
~250 ms of bcrypt each.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import bcrypt
from sqlalchemy import select
from sqlalchemy.orm import Session

from control.core import keys
from control.core.audit import Action
from control.core.base import utcnow
from control.core.context import Ctx
from control.core.errors import InvalidKey, NotFound, ValidationError
from control.core.models import AdminToken, User

SCOPES = ("read", "write")


def create_token(ctx: Ctx, user_id: str, *, scope: str = "read", name: str | None = None,
                 expires_at: datetime | None = None) -> tuple[AdminToken, str]:
    """Issue a token for a control-plane user. Returns the row and the plaintext token."""
    user = ctx.session.get(User, user_id)
    if user is None or user.disabled:
        raise NotFound(f"unknown user {user_id[:40]}")
    if scope not in SCOPES:
        raise ValidationError("scope must be read or write", "scope")
    if scope == "write" and user.role != "admin":
        raise ValidationError("only admins can hold write tokens", "scope")
    if name is not None and len(name) > 100:
        raise ValidationError("token name is longer than 100 characters", "name")
    if expires_at is not None and expires_at <= utcnow():
        raise ValidationError("expiry is in the past", "expires_at")
    raw, parsed = keys.generate(keys.ADMIN_PREFIX)
    token = AdminToken(key_id=parsed.key_id, user_id=user.id, name=name, scope=scope,
                       display_prefix=keys.display_prefix(parsed), expires_at=expires_at,
                       secret_hash=keys.hash_secret(parsed.secret, ctx.config.auth["bcrypt_cost"]))
    ctx.session.add(token)
    ctx.session.flush()
    ctx.audit(Action.ADMIN_TOKEN_CREATED, "admin_token", token.key_id, user_id=user.id,
              scope=scope, expires_at=expires_at.isoformat() if expires_at else None)
    return token, raw


def list_tokens(session: Session, user_id: str | None = None) -> list[AdminToken]:
    q = select(AdminToken).order_by(AdminToken.created_at)
    if user_id:
        q = q.where(AdminToken.user_id == user_id)
    return list(session.scalars(q))


def revoke_token(ctx: Ctx, key_id: str) -> AdminToken:
    token = ctx.session.get(AdminToken, key_id) if key_id and len(key_id) <= 16 else None
    if token is None:
        raise NotFound(f"unknown admin token {key_id[:20]}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        ctx.session.flush()
        ctx.audit(Action.ADMIN_TOKEN_REVOKED, "admin_token", token.key_id, user_id=token.user_id)
    return token


def token_dict(t: AdminToken) -> dict[str, object]:
    """Token metadata — never the hash or the secret."""
    return {"key_id": t.key_id, "user_id": t.user_id, "name": t.name, "scope": t.scope,
            "prefix": t.display_prefix, "created_at": t.created_at.isoformat(),
            "expires_at": t.expires_at.isoformat() if t.expires_at else None,
            "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None}


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def user_dict(u: User) -> dict[str, object]:
    return {"id": u.id, "username": u.username, "role": u.role, "disabled": u.disabled,
            "totp_enabled": u.totp_enabled_at is not None,
            "created_at": u.created_at.isoformat(),
            "last_login_at": u.last_login_at.isoformat() if u.last_login_at else None}


@dataclass(frozen=True)
class TokenPrincipal:
    """Who an API call acts as."""

    token_id: str
    user_id: str
    username: str
    scope: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.scope == "write" and self.role == "admin"


class TokenVerifier:
    """Checks ``Authorization: Bearer hga_…`` tokens. Thread-safe; one per app."""

    def __init__(self, bcrypt_cost: int = 12, ttl_seconds: float = 300) -> None:
        self._pepper = secrets.token_bytes(32)
        self._ttl = ttl_seconds
        self._ok: dict[bytes, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._dummy = bcrypt.hashpw(b"x" * keys.SECRET_LEN, bcrypt.gensalt(rounds=bcrypt_cost))

    def verify(self, session: Session, raw: str | None) -> TokenPrincipal:
        """The principal of a valid, unrevoked, unexpired token; else InvalidKey."""
        parsed = keys.parse(raw, keys.ADMIN_PREFIX)
        assert raw is not None
        fp = hmac.new(self._pepper, raw.encode(), hashlib.sha256).digest()
        row = session.execute(select(AdminToken, User).join(User, User.id == AdminToken.user_id)
                              .where(AdminToken.key_id == parsed.key_id)).first()
        with self._lock:
            hit = self._ok.get(fp)
        cached = (row is not None and hit is not None and hit[1] == parsed.key_id
                  and time.monotonic() - hit[0] < self._ttl)
        if not cached:
            stored = row[0].secret_hash.encode() if row else None
            if not bcrypt.checkpw(parsed.secret.encode(), stored or self._dummy) or not stored:
                raise InvalidKey("invalid API token")
        assert row is not None
        token, user = row
        if token.revoked_at is not None or user.disabled:
            raise InvalidKey("invalid API token")
        if token.expires_at is not None and token.expires_at <= utcnow():
            raise InvalidKey("API token has expired")
        if not cached:
            with self._lock:
                if len(self._ok) > 10_000:
                    self._ok.clear()
                self._ok[fp] = (time.monotonic(), parsed.key_id)
        return TokenPrincipal(token.key_id, user.id, user.username, token.scope, user.role)

"""Server-side control-plane sessions and sign-in throttling.

The browser holds one random token; the database keeps only its SHA-256 (``web_sessions.id``),
so a leaked table cannot be replayed as cookies. A session belongs to a principal (an
operator ``user`` or an ``account`` holder), ends at logout, on revocation by an admin action,
after ``session_idle_minutes`` without use and ``session_absolute_hours`` after sign-in.

Failed sign-ins are counted per subject — an HMAC of the principal kind and name under the
session secret, never the name itself — inside a sliding window.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from control.core import accounts, audit
from control.core.audit import Action, Actor
from control.core.base import utcnow
from control.core.config import Config
from control.core.context import Ctx
from control.core.errors import HushgateError
from control.core.models import Account, LoginFailure, User, WebSession

KINDS = ("user", "account")
TOUCH_SECONDS = 60  # last_seen_at is refreshed at most this often (idle timeout granularity)


def token_id(token: str) -> str:
    """The stored id of a cookie token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ActiveSession:
    """A live session as the web layer sees it."""

    id: str
    kind: str
    principal_id: str
    created_at: datetime
    last_seen_at: datetime
    data: dict[str, Any]


def start(session: Session, kind: str, principal_id: str,
          data: dict[str, Any] | None = None) -> str:
    """Open a new session and return the cookie token (shown to the browser only)."""
    if kind not in KINDS:
        raise ValueError(f"unknown session kind {kind!r}")
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(WebSession(id=token_id(token), principal_kind=kind, principal_id=principal_id,
                           created_at=now, last_seen_at=now, data=dict(data or {})))
    session.flush()
    return token


def _limits(config: Config) -> tuple[timedelta, timedelta]:
    c = config.control
    return (timedelta(minutes=c["session_idle_minutes"]),
            timedelta(hours=c["session_absolute_hours"]))


def load(session: Session, config: Config, token: str | None,
         now: datetime | None = None) -> ActiveSession | None:
    """The live session for a cookie token, or None (unknown, revoked, idle or too old)."""
    if not token or len(token) > 100:
        return None
    row = session.get(WebSession, token_id(token))
    if row is None or row.revoked_at is not None:
        return None
    now = now or utcnow()
    idle, absolute = _limits(config)
    if now - row.last_seen_at > idle or now - row.created_at > absolute:
        return None
    return ActiveSession(row.id, row.principal_kind, row.principal_id, row.created_at,
                         row.last_seen_at, dict(row.data or {}))


def save(session: Session, sid: str, *, data: dict[str, Any] | None,
         now: datetime | None = None) -> None:
    """Refresh ``last_seen_at`` (and the data, when given) of a live session."""
    values: dict[str, Any] = {"last_seen_at": now or utcnow()}
    if data is not None:
        values["data"] = data
    session.execute(update(WebSession).where(WebSession.id == sid,
                                             WebSession.revoked_at.is_(None)).values(**values))


def needs_touch(active: ActiveSession, now: datetime | None = None) -> bool:
    return ((now or utcnow()) - active.last_seen_at).total_seconds() >= TOUCH_SECONDS


def end(session: Session, sid: str) -> None:
    """Log out: the token stops working at once."""
    session.execute(update(WebSession).where(WebSession.id == sid,
                                             WebSession.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))


def revoke_principal(ctx: Ctx, kind: str, principal_id: str) -> int:
    """End every session of a principal (an admin action, audited when any was live)."""
    result = ctx.session.execute(update(WebSession)
                                 .where(WebSession.principal_kind == kind,
                                        WebSession.principal_id == principal_id,
                                        WebSession.revoked_at.is_(None))
                                 .values(revoked_at=utcnow()))
    count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if count:
        ctx.audit(Action.SESSION_REVOKED, kind, principal_id, count=count)
    return count


def list_sessions(session: Session, kind: str, principal_id: str,
                  limit: int = 50) -> list[WebSession]:
    return list(session.scalars(select(WebSession)
                                .where(WebSession.principal_kind == kind,
                                       WebSession.principal_id == principal_id)
                                .order_by(WebSession.created_at.desc()).limit(limit)))


def purge_expired(session: Session, config: Config, now: datetime | None = None) -> int:
    """Delete sessions that can no longer be used (housekeeping)."""
    now = now or utcnow()
    idle, absolute = _limits(config)
    result = session.execute(delete(WebSession).where(
        (WebSession.revoked_at.is_not(None)) | (WebSession.created_at < now - absolute)
        | (WebSession.last_seen_at < now - idle)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- sign-in throttling ---------------------------------------------------------------------


def login_subject(config: Config, kind: str, name: str) -> str:
    """An HMAC of who tried to sign in, so the table never holds usernames or emails."""
    msg = f"{kind}:{(name or '').strip().lower()}".encode()
    return hmac.new(config.session_secret(), msg, hashlib.sha256).hexdigest()


def is_throttled(session: Session, config: Config, subject: str,
                 now: datetime | None = None) -> bool:
    """True when the subject used up ``login_max_attempts`` within ``login_window_seconds``."""
    c = config.control
    since = (now or utcnow()) - timedelta(seconds=c["login_window_seconds"])
    count = session.scalar(select(func.count()).select_from(LoginFailure)
                           .where(LoginFailure.subject == subject,
                                  LoginFailure.created_at >= since))
    return int(count or 0) >= c["login_max_attempts"]


def record_failure(session: Session, subject: str) -> None:
    session.add(LoginFailure(subject=subject, created_at=utcnow()))
    session.flush()


def clear_failures(session: Session, subject: str) -> None:
    session.execute(delete(LoginFailure).where(LoginFailure.subject == subject))


# -- sign-in --------------------------------------------------------------------------------


class SignInRefused(HushgateError):
    """Wrong name or password (deliberately not saying which)."""

    code = "invalid_credentials"


class SignInThrottled(HushgateError):
    code = "too_many_attempts"


def sign_in(session: Session, config: Config, kind: str, name: str,
            password: str) -> tuple[str, str]:
    """Check a user's (``kind='user'``) or account holder's (``'account'``) credentials and
    open a session. Returns the cookie token and the principal id. Throttled per subject;
    every outcome audited. A refusal raises after recording the failure, so the caller
    catches it *inside* its transaction to commit the failure record."""
    subject = login_subject(config, kind, name)
    if is_throttled(session, config, subject):
        raise SignInThrottled("too many failed sign-ins: wait a few minutes and try again")
    principal_id: str | None = None
    stored: str | None = None
    if kind == "user":
        user = session.scalar(select(User).where(User.username == (name or "").strip()))
        if user is not None and not user.disabled:
            principal_id, stored = user.id, user.password_hash
    else:
        ref = (name or "").strip()
        account = session.scalar(select(Account).where(func.lower(Account.email) == ref.lower(),
                                                       Account.status == "active")) \
            if "@" in ref and len(ref) <= 254 else None
        if account is not None:
            principal_id, stored = account.id, account.password_hash
    ok = accounts.check_password(password, stored)
    actor = Actor(kind, principal_id or "unknown")
    key = config.audit_hmac_key()
    if not ok or principal_id is None:
        record_failure(session, subject)
        audit.record(session, key, actor, Action.USER_SIGN_IN_FAILED, kind, principal_id)
        raise SignInRefused("wrong name or password")
    clear_failures(session, subject)
    if kind == "user":
        session.execute(update(User).where(User.id == principal_id)
                        .values(last_login_at=utcnow()))
    audit.record(session, key, actor, Action.USER_SIGNED_IN, kind, principal_id)
    return start(session, kind, principal_id), principal_id


def sign_out(session: Session, config: Config, sid: str, kind: str, principal_id: str) -> None:
    end(session, sid)
    audit.record(session, config.audit_hmac_key(), Actor(kind, principal_id),
                 Action.USER_SIGNED_OUT, kind, principal_id)

"""Server-side control-plane sessions and sign-in throttling.

The browser holds one random token; the database keeps only its SHA-256 (``web_sessions.id``),
so a leaked table cannot be replayed as cookies. A session belongs to a principal (an
operator ``user`` or an ``account`` holder), ends at logout, on revocation by an admin action,
after ``session_idle_minutes`` without use and ``session_absolute_hours`` after sign-in.

Failed sign-ins are counted per subject — an HMAC of the principal kind and name under the
session secret, never the name itself — inside a sliding window.

An operator with two-factor sign-in (``control.core.totp``) gets, for the right password, only
a *pending* session (kind ``pending``): it authenticates nothing — the web layer treats only
``user`` sessions as signed in — and lives ``PENDING_SECONDS`` at most, until
``totp.finish_sign_in`` exchanges it and a current code for a new ``user`` session.
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

PENDING = "pending"  # right password, second factor still due: grants nothing
KINDS = ("user", "account", PENDING)
PENDING_SECONDS = 300  # time allowed between the password and the code
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


def end_all(session: Session, kind: str, principal_id: str,
            keep: str | None = None) -> int:
    """End every live session of a principal except ``keep`` (for an operator, including a
    sign-in waiting for its second factor); the count. Prefer ``revoke_principal``, which
    audits: this is its mechanism."""
    kinds = (kind, PENDING) if kind == "user" else (kind,)
    q = update(WebSession).where(WebSession.principal_kind.in_(kinds),
                                 WebSession.principal_id == principal_id,
                                 WebSession.revoked_at.is_(None))
    if keep:
        q = q.where(WebSession.id != keep)
    result = session.execute(q.values(revoked_at=utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def revoke_principal(ctx: Ctx, kind: str, principal_id: str, *,
                     keep: str | None = None) -> int:
    """End every session of a principal (but ``keep``, the stored id of the one in use) and
    audit it when any was live: the one way every service and front end ends sessions
    (disabling or deleting an account, a new password, an admin's "end all sessions")."""
    count = end_all(ctx.session, kind, principal_id, keep)
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
    pending_gone = ((WebSession.principal_kind == PENDING)
                    & (WebSession.created_at < now - timedelta(seconds=PENDING_SECONDS)))
    result = session.execute(delete(WebSession).where(
        (WebSession.revoked_at.is_not(None)) | (WebSession.created_at < now - absolute)
        | (WebSession.last_seen_at < now - idle) | pending_gone))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- sign-in throttling ---------------------------------------------------------------------
#
# Two budgets, both counted in ``login_failures`` under HMAC subjects (never a name or an
# address) within ``login_window_seconds``:
#
# - per client (IP): after ``login_client_free_attempts`` failures, each further attempt
#   from that client must wait twice as long as the one before after its last failure (up to
#   ``login_max_delay_seconds``): a spray of many names from one client is slowed to a crawl;
# - per name: once a name has ``login_max_attempts`` failures, clients that have themselves
#   been failing are refused for that long too. A client that hasn't been failing still gets
#   its attempt, so nobody can keep an operator out by failing on purpose (no hard lockout).
#
# A refusal is a 429 with ``retry_after``; nothing sleeps on the server.


def login_subject(config: Config, kind: str, name: str) -> str:
    """An HMAC of who tried to sign in, so the table never holds usernames or emails."""
    msg = f"{kind}:{(name or '').strip().lower()}".encode()
    return hmac.new(config.session_secret(), msg, hashlib.sha256).hexdigest()


def client_subject(config: Config, client: str | None) -> str | None:
    """The throttling subject of a client address (None when unknown)."""
    return login_subject(config, "client", client) if client else None


def _failures(session: Session, subject: str, since: datetime) -> tuple[int, datetime | None]:
    count, last = session.execute(select(func.count(), func.max(LoginFailure.created_at))
                                  .where(LoginFailure.subject == subject,
                                         LoginFailure.created_at >= since)).one()
    return int(count or 0), last


def _delay(config: Config, excess: int) -> int:
    return int(min(2 ** max(excess, 0), config.control["login_max_delay_seconds"]))


def retry_after(session: Session, config: Config, subject: str, client: str | None = None,
                now: datetime | None = None) -> int:
    """Seconds the next attempt for ``subject`` from ``client`` must wait (0: go ahead)."""
    c = config.control
    now = now or utcnow()
    since = now - timedelta(seconds=c["login_window_seconds"])
    waits = [0]
    client_failures = 0
    if client is not None:
        client_failures, last = _failures(session, client, since)
        free = c["login_client_free_attempts"]
        if client_failures >= free and last is not None:
            due = last + timedelta(seconds=_delay(config, client_failures - free))
            waits.append(int((due - now).total_seconds()) + 1 if due > now else 0)
    name_failures, last = _failures(session, subject, since)
    limit = c["login_max_attempts"]
    if name_failures >= limit and last is not None and (client is None or client_failures):
        due = last + timedelta(seconds=_delay(config, name_failures - limit))
        waits.append(int((due - now).total_seconds()) + 1 if due > now else 0)
    return max(waits)


def is_throttled(session: Session, config: Config, subject: str,
                 now: datetime | None = None) -> bool:
    """True when ``subject`` used up ``login_max_attempts`` within ``login_window_seconds``
    (the second factor's hard limit: only someone with the password gets that far)."""
    c = config.control
    since = (now or utcnow()) - timedelta(seconds=c["login_window_seconds"])
    return _failures(session, subject, since)[0] >= c["login_max_attempts"]


def record_failure(session: Session, subject: str, client: str | None = None) -> None:
    session.add(LoginFailure(subject=subject, created_at=utcnow()))
    if client is not None:
        session.add(LoginFailure(subject=client, created_at=utcnow()))
    session.flush()


def clear_failures(session: Session, subject: str) -> None:
    """After a successful sign-in: the name's budget is whole again (the client's is not:
    signing in to one's own account must not reset a spray)."""
    session.execute(delete(LoginFailure).where(LoginFailure.subject == subject))


# -- sign-in --------------------------------------------------------------------------------


class SignInRefused(HushgateError):
    """Wrong name or password (deliberately not saying which)."""

    code = "invalid_credentials"


class SignInThrottled(HushgateError):
    code = "too_many_attempts"

    def __init__(self, message: str, retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SignInExpired(HushgateError):
    """The pending second step is gone (too slow, throttled, signed out or revoked)."""

    code = "sign_in_expired"


@dataclass(frozen=True)
class SignedIn:
    """A session a sign-in step opened: the cookie token, the session kind and the principal.

    ``kind`` is ``PENDING`` when the password was right but a second factor is still due:
    that session authenticates nothing."""

    token: str
    kind: str
    principal_id: str

    @property
    def needs_code(self) -> bool:
        return self.kind == PENDING


def sign_in(session: Session, config: Config, kind: str, name: str,
            password: str, *, client: str | None = None,
            replaces: str | None = None) -> SignedIn:
    """Check a user's (``kind='user'``) or account holder's (``'account'``) credentials and
    open a session. ``client`` (the caller's address) and the name are throttled (see above);
    every outcome is audited. An unknown or disabled name costs the same bcrypt work as a
    real one. ``replaces`` is the session the browser already has: a successful sign-in
    ends it. A refusal raises after recording the failure, so the caller catches it *inside*
    its transaction to commit the failure record.

    An operator with two-factor sign-in gets a ``PENDING`` session instead."""
    subject = login_subject(config, kind, name)
    client_sub = client_subject(config, client)
    wait = retry_after(session, config, subject, client_sub)
    if wait:
        raise SignInThrottled(f"too many failed sign-ins: wait {wait} seconds and try again",
                              wait)
    principal_id: str | None = None
    stored: str | None = None
    needs_code = False
    if kind == "user":
        user = session.scalar(select(User).where(User.username == (name or "").strip()))
        if user is not None and not user.disabled:
            principal_id, stored = user.id, user.password_hash
            needs_code = user.totp_enabled_at is not None
    else:
        ref = (name or "").strip()
        account = session.scalar(select(Account).where(func.lower(Account.email) == ref.lower(),
                                                       Account.status == "active")) \
            if "@" in ref and len(ref) <= 254 else None
        if account is not None:
            principal_id, stored = account.id, account.password_hash
    ok = accounts.check_password(password, stored, config.auth["bcrypt_cost"])
    actor = Actor(kind, principal_id or "unknown")
    key = config.audit_hmac_key()
    if not ok or principal_id is None:
        record_failure(session, subject, client_sub)
        audit.record(session, key, actor, Action.USER_SIGN_IN_FAILED, kind, principal_id)
        raise SignInRefused("wrong name or password")
    if replaces:
        end(session, replaces)
    if needs_code:
        return SignedIn(start(session, PENDING, principal_id), PENDING, principal_id)
    return complete_sign_in(session, config, kind, principal_id, subject)


def complete_sign_in(session: Session, config: Config, kind: str, principal_id: str,
                     subject: str, **details: Any) -> SignedIn:
    """Every factor checked: clear the failures, audit, and open the real session."""
    clear_failures(session, subject)
    if kind == "user":
        session.execute(update(User).where(User.id == principal_id)
                        .values(last_login_at=utcnow()))
    audit.record(session, config.audit_hmac_key(), Actor(kind, principal_id),
                 Action.USER_SIGNED_IN, kind, principal_id, **details)
    return SignedIn(start(session, kind, principal_id), kind, principal_id)


def sign_out(session: Session, config: Config, sid: str, kind: str, principal_id: str) -> None:
    end(session, sid)
    if kind == PENDING:
        return  # abandoned before the second factor: nobody was signed in
    audit.record(session, config.audit_hmac_key(), Actor(kind, principal_id),
                 Action.USER_SIGNED_OUT, kind, principal_id)

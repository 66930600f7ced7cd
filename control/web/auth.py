"""Who is signed in, and the decorators that guard pages."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import abort, g, redirect, request, session, url_for

from control.core import sessions
from control.core.audit import Actor
from control.core.models import Account, User
from control.web.ext import hg
from control.web.session_store import HushSession


def _session() -> HushSession:
    assert isinstance(session, HushSession) or hasattr(session, "sid")
    return session  # type: ignore[return-value]


def current_user() -> User | None:
    """The signed-in operator (``users`` row), or None."""
    if "hg_user" not in g:
        s = _session()
        user = None
        if s.sid and s.kind == "user":
            with hg().reader() as db:
                user = db.get(User, s.principal_id)
            if user is not None and user.disabled:
                user = None
        g.hg_user = user
    return g.hg_user  # type: ignore[no-any-return]


def current_account() -> Account | None:
    """The signed-in account holder, or None (deleted or disabled accounts are signed out)."""
    if "hg_account" not in g:
        s = _session()
        account = None
        if s.sid and s.kind == "account":
            with hg().reader() as db:
                account = db.get(Account, s.principal_id)
            if account is not None and account.status != "active":
                account = None
        g.hg_account = account
    return g.hg_account  # type: ignore[no-any-return]


def user_actor() -> Actor:
    user = current_user()
    assert user is not None
    return Actor("user", user.id)


def account_actor() -> Actor:
    account = current_account()
    assert account is not None
    return Actor("account", account.id)


def admin_required(role: str = "viewer") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Require a signed-in operator; ``role='admin'`` refuses viewers with 403."""

    def deco(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
            if role == "admin" and user.role != "admin":
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return deco


def account_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_account() is None:
            return redirect(url_for("portal.login"))
        return view(*args, **kwargs)

    return wrapped


def safe_next(target: str | None, default: str) -> str:
    """Only same-origin absolute paths: ``/`` then not ``/`` or ``\\``, and no whitespace,
    control character or backslash anywhere (browsers drop tabs and newlines, and treat
    ``\\`` like ``/``, which would turn ``/\t/evil.example`` into ``//evil.example``)."""
    if not target or len(target) > 2000 or not target.startswith("/"):
        return default
    if any(c == "\\" or c.isspace() or ord(c) < 0x20 or ord(c) == 0x7f for c in target):
        return default
    parts = urlsplit(target)
    if target.startswith("//") or parts.scheme or parts.netloc:
        return default
    return target


def begin(token: str, kind: str, principal_id: str) -> None:
    """Attach a freshly started server-side session to this response (new cookie)."""
    _session().adopt(token, sessions.token_id(token), kind, principal_id)
    g.pop("hg_user", None)
    g.pop("hg_account", None)


def pending_sign_in() -> tuple[str, str] | None:
    """(session id, user id) of a sign-in waiting for its second factor, or None.

    Such a session authenticates nothing: ``current_user`` only accepts ``user`` sessions."""
    s = _session()
    if s.sid and s.kind == sessions.PENDING and s.principal_id:
        return s.sid, s.principal_id
    return None


def current_sid() -> str | None:
    """The id of the session this browser already has (signed in, or half-way), if any."""
    return _session().sid


def client_address() -> str | None:
    """The address sign-in throttling counts against (the peer of this connection)."""
    return request.remote_addr


def throttled_response(body: Any, exc: sessions.SignInThrottled) -> Any:
    """A 429 page with ``Retry-After``."""
    return body, 429, {"Retry-After": str(exc.retry_after)}


def abandon() -> None:
    """Drop the cookie of a session that has already ended in the database."""
    _session().end()


def finish() -> None:
    """End the session in the database and drop the cookie."""
    s = _session()
    if s.sid and s.kind and s.principal_id:
        with hg().db.transaction() as db:
            sessions.sign_out(db, hg().config, s.sid, s.kind, s.principal_id)
    s.end()

"""Passwords: operators change their own or have an admin set it; account holders reset a
forgotten one, or set their first one, through a single-use e-mailed link.

Operators (``users``): ``change_own_password`` needs the current password; an admin sets any
operator's password with ``set_user_password`` and removes an operator with ``delete_user``
(never the last enabled admin). Every change ends the operator's other sessions.

Account holders: ``request_reset`` (the portal's "forgot password") and ``invite_account`` (an
admin created the account, e.g. from the CLI, so it has no password yet) queue an essential
message with a link; ``set_password_with_token`` uses it once. A link is ``<id>.<mac>``: the id
is random and is all the database holds (``password_tokens``, and the outbox row of the
message); the MAC is an HMAC of the id under the session secret, computed again only to
render the message and to check a link. So a copy of the database alone opens nothing.
Asking for a reset of an e-mail that has no account answers the same and sends nothing.

Hashing and strength rules are ``control.core.accounts``'s (bcrypt at ``auth.bcrypt_cost``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from control.core import accounts, notify, sessions
from control.core.audit import Action
from control.core.base import utcnow
from control.core.config import Config
from control.core.context import Ctx
from control.core.errors import HushgateError, NotFound, ValidationError
from control.core.models import Account, AdminToken, PasswordToken, User

RESET_INTERVAL_SECONDS = 60  # at most one reset message per account this often
SET_PASSWORD_PATH = "/portal/password/"
_MAC_LABEL = b"hushgate-password-link|"


class InvalidLink(HushgateError):
    """The link is malformed, unknown, expired or already used (deliberately not which)."""

    code = "invalid_link"


# -- links ----------------------------------------------------------------------------------


def listen_url(section: dict[str, Any]) -> str:
    """The base URL a listener section (``control`` or ``proxy``) serves at: its listen
    address, https when it serves TLS."""
    scheme = "https" if section["tls"]["cert_file"] else "http"
    host = section["listen_host"]
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{section['listen_port']}"


def control_url(config: Config, path: str) -> str:
    """An absolute URL of the control plane (links in messages, processor return pages):
    under ``control.public_url`` when configured (e.g. behind a reverse proxy), else under
    its listen address."""
    base = config.control["public_url"]
    return (base.rstrip("/") if base else listen_url(config.control)) + path


def _mac(config: Config, token_id: str) -> str:
    digest = hmac.new(config.session_secret(), _MAC_LABEL + token_id.encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def link_token(config: Config, token_id: str) -> str:
    """What a link carries: ``<id>.<mac>`` (the MAC part is never stored)."""
    return f"{token_id}.{_mac(config, token_id)}"


def link(config: Config, token_id: str) -> str:
    """The URL an account holder opens to set a password (rendered into the message)."""
    return control_url(config, SET_PASSWORD_PATH + link_token(config, token_id))


def _lifetimes(config: Config) -> dict[str, timedelta]:
    c = config.control
    return {"reset": timedelta(minutes=c["password_reset_minutes"]),
            "invite": timedelta(hours=c["invite_hours"])}


def _issue(session: Session, config: Config, account: Account, purpose: str,
           now: datetime) -> PasswordToken:
    # One live link per account and purpose: a new one retires the older ones.
    session.execute(update(PasswordToken)
                    .where(PasswordToken.account_id == account.id,
                           PasswordToken.purpose == purpose, PasswordToken.used_at.is_(None),
                           PasswordToken.expires_at > now)
                    .values(expires_at=now))
    token = PasswordToken(id=secrets.token_hex(16), purpose=purpose, account_id=account.id,
                          created_at=now, expires_at=now + _lifetimes(config)[purpose])
    session.add(token)
    session.flush()
    return token


# -- account holders ------------------------------------------------------------------------


def request_reset(ctx: Ctx, email: str) -> None:
    """Queue a reset link to the account with this e-mail, if there is an active one.

    Returns nothing either way, so the caller answers the same for every address: an unknown
    (or deleted, or malformed) address sends nothing and records nothing. Repeated requests
    within ``RESET_INTERVAL_SECONDS`` send no second message."""
    ref = (email or "").strip()
    if "@" not in ref or len(ref) > 254:
        return
    account = ctx.session.scalar(select(Account).where(func.lower(Account.email) == ref.lower(),
                                                       Account.status == "active"))
    if account is None:
        return
    now = utcnow()
    recent = ctx.session.scalar(
        select(PasswordToken.id).where(
            PasswordToken.account_id == account.id, PasswordToken.purpose == "reset",
            PasswordToken.created_at > now - timedelta(seconds=RESET_INTERVAL_SECONDS))
        .limit(1))
    if recent is not None:
        return
    token = _issue(ctx.session, ctx.config, account, "reset", now)
    notify.send(ctx.session, ctx.config, account.id, "password_reset", token_id=token.id,
                minutes=ctx.config.control["password_reset_minutes"])
    ctx.audit(Action.ACCOUNT_PASSWORD_RESET_REQUESTED, "account", account.id,
              expires_at=token.expires_at.isoformat())


def invite_account(ctx: Ctx, account_id: str) -> PasswordToken:
    """Queue an invitation to set a first password (an admin action). An account that
    already has a password can be sent a reset instead."""
    account = accounts.get_account(ctx.session, account_id)
    if account.status != "active":
        raise ValidationError(f"account {account.id} is {account.status}", "account")
    if account.password_hash:
        raise ValidationError("the account already has a password (the holder can use "
                              "'forgot password')", "account")
    token = _issue(ctx.session, ctx.config, account, "invite", utcnow())
    notify.send(ctx.session, ctx.config, account.id, "account_invite", token_id=token.id,
                hours=ctx.config.control["invite_hours"])
    ctx.audit(Action.ACCOUNT_INVITED, "account", account.id,
              expires_at=token.expires_at.isoformat())
    return token


def _live_token(session: Session, config: Config, link_value: str,
                now: datetime) -> PasswordToken:
    token_id, _, mac = (link_value or "").strip().partition(".")
    if len(token_id) != 32 or not mac or len(mac) > 64:
        raise InvalidLink("this link is not valid (it may have expired or been used)")
    ok = hmac.compare_digest(_mac(config, token_id), mac)
    token = session.get(PasswordToken, token_id) if ok else None
    if token is None or token.used_at is not None or token.expires_at <= now:
        raise InvalidLink("this link is not valid (it may have expired or been used)")
    return token


def check_link(session: Session, config: Config, link_value: str) -> str:
    """The purpose (``reset`` or ``invite``) of a usable link, for the page that shows the
    form; raises InvalidLink otherwise. Uses nothing up."""
    return _live_token(session, config, link_value, utcnow()).purpose


def set_password_with_token(ctx: Ctx, link_value: str, password: str) -> Account:
    """Use a link once: set the holder's password and end their sessions. The link is spent
    only if the password is acceptable (a weak one can be retried with the same link)."""
    now = utcnow()
    token = _live_token(ctx.session, ctx.config, link_value, now)
    account = ctx.session.get(Account, token.account_id)
    if account is None or account.status != "active":
        raise InvalidLink("this link is not valid (it may have expired or been used)")
    new_hash = accounts.hash_password(password, ctx.config.auth["bcrypt_cost"], account.email)
    spent = ctx.session.execute(update(PasswordToken)
                                .where(PasswordToken.id == token.id,
                                       PasswordToken.used_at.is_(None))
                                .values(used_at=now))
    if not spent.rowcount:  # type: ignore[attr-defined]
        raise InvalidLink("this link is not valid (it may have expired or been used)")
    account.password_hash, account.updated_at = new_hash, now
    ctx.session.flush()
    ctx.audit(Action.ACCOUNT_PASSWORD_RESET, "account", account.id, purpose=token.purpose)
    sessions.revoke_principal(ctx, "account", account.id)
    return account


# -- operators ------------------------------------------------------------------------------


def _user(session: Session, user_ref: str) -> User:
    ref = (user_ref or "").strip()
    user = session.get(User, ref) if 0 < len(ref) <= 32 else None
    if user is None:
        user = accounts.get_user_by_name(session, ref[:64])
    if user is None:
        raise NotFound(f"unknown operator {ref[:64]!r}")
    return user


def change_own_password(ctx: Ctx, user_id: str, current: str, new: str, *,
                        keep_session: str | None = None) -> User:
    """An operator changes their password: the current one must be right. Ends their other
    sessions (``keep_session``, the stored id of the one in use, survives)."""
    user = _user(ctx.session, user_id)
    if not accounts.check_password(current, user.password_hash, ctx.config.auth["bcrypt_cost"]):
        raise ValidationError("the current password is wrong", "current_password")
    if current == new:
        raise ValidationError("the new password is the current one", "password")
    user.password_hash = accounts.hash_password(new, ctx.config.auth["bcrypt_cost"],
                                                user.username)
    ctx.session.flush()
    ctx.audit(Action.USER_PASSWORD_CHANGED, "user", user.id, by="self")
    sessions.revoke_principal(ctx, "user", user.id, keep=keep_session)
    return user


def set_user_password(ctx: Ctx, user_ref: str, new: str) -> User:
    """An admin (or the CLI) sets an operator's password; every session of theirs ends."""
    user = _user(ctx.session, user_ref)
    user.password_hash = accounts.hash_password(new, ctx.config.auth["bcrypt_cost"],
                                                user.username)
    ctx.session.flush()
    ctx.audit(Action.USER_PASSWORD_CHANGED, "user", user.id, by="admin")
    sessions.revoke_principal(ctx, "user", user.id)
    return user


def delete_user(ctx: Ctx, user_ref: str) -> str:
    """Remove an operator: sessions end, API tokens go, the row goes (audit events keep the
    id). The last enabled admin can't be removed, nor can an operator remove themselves."""
    user = _user(ctx.session, user_ref)
    if ctx.actor.kind == "user" and ctx.actor.id == user.id:
        raise ValidationError("you cannot delete your own operator account", "user")
    if user.role == "admin" and not user.disabled:
        # Lock the enabled admins so two concurrent deletions can't both pass the check.
        admins = ctx.session.scalars(select(User.id).where(User.role == "admin",
                                                          User.disabled.is_(False))
                                     .with_for_update()).all()
        if len(admins) <= 1:
            raise ValidationError("the last admin cannot be deleted: create or enable another "
                                  "admin first", "user")
    sessions.revoke_principal(ctx, "user", user.id)
    tokens = ctx.session.execute(delete(AdminToken).where(AdminToken.user_id == user.id))
    user_id, username = user.id, user.username
    ctx.session.delete(user)
    ctx.session.flush()
    ctx.audit(Action.USER_DELETED, "user", user_id, username=username,
              tokens_removed=int(tokens.rowcount or 0))  # type: ignore[attr-defined]
    return user_id


def purge_spent_tokens(session: Session, now: datetime | None = None) -> int:
    """Delete links that can no longer be used (housekeeping)."""
    now = now or utcnow()
    result = session.execute(delete(PasswordToken).where(
        PasswordToken.used_at.is_not(None) | (PasswordToken.expires_at <= now)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]

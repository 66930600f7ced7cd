"""Accounts (API customers) and control-plane users (admins, viewers)."""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Any

import bcrypt
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from control.core import notify, validation
from control.core import wallet as wallet_service
from control.core.audit import Action
from control.core.base import utcnow
from control.core.context import Ctx
from control.core.errors import Conflict, NotFound, ValidationError
from control.core.keys import bump_keys_counter
from control.core.models import Account, ApiKey, User

EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                      r"[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{3,64}$")
PROFILE_FIELDS = ("name", "email", "company")
MIN_PASSWORD = 10


def normalize_email(email: str | None) -> str:
    email = (email or "").strip()
    if len(email) > 254 or not EMAIL_RE.match(email):
        raise ValidationError("email address is malformed", "email")
    local, domain = email.rsplit("@", 1)
    return f"{local}@{domain.lower()}"


def _clean_text(value: str | None, field: str, *, required: bool, max_len: int = 200) -> str | None:
    value = (value or "").strip()
    if not value:
        if required:
            raise ValidationError(f"{field} is required", field)
        return None
    if len(value) > max_len:
        raise ValidationError(f"{field} is longer than {max_len} characters", field)
    if any(ord(c) < 32 for c in value):
        raise ValidationError(f"{field} contains control characters", field)
    return value


def check_new_password(password: str | None, *avoid: str | None) -> str:
    """A new password must be 10+ characters of at least 4 different ones, at most 72 bytes
    (bcrypt's limit), storable text, and not the name or e-mail it protects."""
    if not password or len(password) < MIN_PASSWORD:
        raise ValidationError(f"password must be at least {MIN_PASSWORD} characters", "password")
    validation.check_text(password, "password")
    if len(password.encode()) > 72:
        raise ValidationError("password must be at most 72 bytes", "password")
    lowered = password.strip().lower()
    if len(set(password)) < 4 or any(a and lowered == a.strip().lower() for a in avoid):
        raise ValidationError("password is too easy to guess", "password")
    return password


def hash_password(password: str, cost: int, *avoid: str | None) -> str:
    check_new_password(password, *avoid)
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


@functools.cache
def _dummy_hash(cost: int) -> bytes:
    """A hash at the configured cost, made once per process, for names that don't exist."""
    return bcrypt.hashpw(b"hushgate-dummy-password", bcrypt.gensalt(rounds=cost))


def check_password(password: str, stored: str | None, cost: int = 12) -> bool:
    """A missing user (``stored`` None) pays the same bcrypt verify as a real one, at
    ``cost`` (pass ``auth.bcrypt_cost``): sign-in time says nothing about which names exist."""
    pw = (password or "").encode("utf-8", "replace")[:72]
    if not stored:
        bcrypt.checkpw(pw, _dummy_hash(cost))
        return False
    return bcrypt.checkpw(pw, stored.encode())


# -- accounts -------------------------------------------------------------------------------


def _email_taken(session: Session, email: str, except_id: str | None = None) -> bool:
    q = select(Account.id).where(func.lower(Account.email) == email.lower(),
                                 Account.status != "erased")
    if except_id:
        q = q.where(Account.id != except_id)
    return session.scalar(q.limit(1)) is not None


def create_account(ctx: Ctx, *, name: str, email: str, company: str | None = None,
                   adult_attested: bool, password: str | None = None,
                   opt_out_non_essential: bool = False) -> Account:
    """Create an account and its (empty) wallet. Requires the 18+ attestation."""
    if adult_attested is not True:
        age = ctx.config.policy.get("minimum_age", 18)
        raise ValidationError(f"the account holder must attest being {age} or older",
                              "adult_attested")
    name_v = _clean_text(name, "name", required=True)
    email_v = normalize_email(email)
    company_v = _clean_text(company, "company", required=False)
    if _email_taken(ctx.session, email_v):
        raise Conflict("an account with this email already exists")
    # None: an account made by an operator, without portal sign-in. A given password (even
    # an empty one, e.g. from the sign-up form) must pass the rules.
    pw_hash = (hash_password(password, ctx.config.auth["bcrypt_cost"], email_v, name_v)
               if password is not None else None)
    account = Account(name=name_v, email=email_v, company=company_v, status="active",
                      adult_attested_at=utcnow(), password_hash=pw_hash,
                      opt_out_non_essential=opt_out_non_essential)
    ctx.session.add(account)
    ctx.session.flush()
    wallet_service.ensure_wallet(ctx.session, account.id)
    ctx.audit(Action.ACCOUNT_CREATED, "account", account.id)
    return account


def get_account(session: Session, ref: str) -> Account:
    """By id, or by email for convenience in the CLI."""
    ref = (ref or "").strip()
    account = session.get(Account, ref) if 0 < len(ref) <= 32 else None
    if account is None and "@" in ref and len(ref) <= 254:
        account = session.scalar(select(Account).where(func.lower(Account.email) == ref.lower(),
                                                       Account.status != "erased"))
    if account is None:
        raise NotFound(f"unknown account {ref[:64]!r}")
    return account


def list_accounts(session: Session, *, search: str | None = None, status: str | None = None,
                  limit: int = 100, offset: int = 0) -> list[Account]:
    q = select(Account).order_by(Account.created_at.desc(), Account.id).limit(limit).offset(offset)
    if search:
        like = f"%{search.strip().lower()[:100]}%"
        q = q.where(or_(func.lower(Account.name).like(like), func.lower(Account.email).like(like),
                        func.lower(Account.company).like(like), Account.id == search.strip()))
    if status:
        q = q.where(Account.status == status)
    return list(session.scalars(q))


def count_accounts(session: Session, status: str | None = None) -> int:
    q = select(func.count()).select_from(Account)
    if status:
        q = q.where(Account.status == status)
    return int(session.scalar(q) or 0)


def update_account(ctx: Ctx, account_id: str, **changes: Any) -> Account:
    """Correct profile fields; the audit event names the changed fields (not the values)."""
    account = get_account(ctx.session, account_id)
    if account.status in ("deleted", "erased"):
        raise ValidationError(f"account {account_id} is {account.status}", "account")
    unknown = set(changes) - set(PROFILE_FIELDS)
    if unknown:
        raise ValidationError(f"cannot change {sorted(unknown)[0]!r}", sorted(unknown)[0])
    changed = []
    for field, value in changes.items():
        if value is None:
            continue
        if field == "email":
            value = normalize_email(value)
            if _email_taken(ctx.session, value, except_id=account.id):
                raise Conflict("an account with this email already exists")
        else:
            value = _clean_text(value, field, required=field == "name")
        if getattr(account, field) != value:
            setattr(account, field, value)
            changed.append(field)
    if changed:
        account.updated_at = utcnow()
        ctx.session.flush()
        ctx.audit(Action.ACCOUNT_UPDATED, "account", account.id, fields=sorted(changed))
    return account


def _sessions() -> Any:
    # sessions imports this module (passwords); the dependency back is only at call time
    from control.core import sessions

    return sessions


def set_account_status(ctx: Ctx, account_id: str, status: str) -> Account:
    """Disable (keys stop working within ~1 s, portal sessions end at once) or re-enable an
    account. The one place this rule lives: the UI, the API and the CLI all call it."""
    if status not in ("active", "disabled"):
        raise ValidationError("status must be active or disabled", "status")
    account = get_account(ctx.session, account_id)
    if account.status in ("deleted", "erased"):
        raise ValidationError(f"account {account_id} is {account.status}", "account")
    if account.status != status:
        account.status, account.updated_at = status, utcnow()
        bump_keys_counter(ctx.session)
        ctx.session.flush()
        ctx.audit(Action.ACCOUNT_ENABLED if status == "active" else Action.ACCOUNT_DISABLED,
                  "account", account.id)
    if account.status == "disabled":
        _sessions().revoke_principal(ctx, "account", account.id)
    return account


def set_preferences(ctx: Ctx, account_id: str, *, opt_out_non_essential: bool) -> Account:
    account = get_account(ctx.session, account_id)
    if account.opt_out_non_essential != opt_out_non_essential:
        account.opt_out_non_essential = opt_out_non_essential
        account.updated_at = utcnow()
        ctx.session.flush()
        ctx.audit(Action.PREFERENCES_UPDATED, "account", account.id,
                  opt_out_non_essential=opt_out_non_essential)
    return account


def delete_account(ctx: Ctx, account_id: str) -> Account:
    """Access ends at once: keys revoked, sessions ended, requests refused. Personal data is
    erased after the configured grace window by the retention job (or at once by an admin)."""
    account = get_account(ctx.session, account_id)
    if account.status in ("deleted", "erased"):
        return account
    now = utcnow()
    ctx.session.execute(update(ApiKey).where(ApiKey.account_id == account.id,
                                             ApiKey.status == "active")
                        .values(status="revoked", revoked_at=now))
    _sessions().revoke_principal(ctx, "account", account.id)
    account.status, account.deleted_at, account.updated_at = "deleted", now, now
    bump_keys_counter(ctx.session)
    ctx.session.flush()
    ctx.audit(Action.ACCOUNT_DELETED, "account", account.id)
    notify.send(ctx.session, ctx.config, account.id, "account_deleted",
                days=ctx.config.retention["deleted_account_erasure_days"])
    return account


def account_dict(a: Account) -> dict[str, Any]:
    def iso(d: datetime | None) -> str | None:
        return d.isoformat() if d else None
    return {"id": a.id, "name": a.name, "email": a.email, "company": a.company,
            "status": a.status, "adult_attested_at": iso(a.adult_attested_at),
            "opt_out_non_essential": a.opt_out_non_essential,
            "created_at": iso(a.created_at), "updated_at": iso(a.updated_at),
            "deleted_at": iso(a.deleted_at), "erased_at": iso(a.erased_at)}


# -- control-plane users --------------------------------------------------------------------


def create_user(ctx: Ctx, *, username: str, password: str, role: str = "admin") -> User:
    if not USERNAME_RE.match(username or ""):
        raise ValidationError("username must be 3-64 letters, digits, '.', '_' or '-'",
                              "username")
    if role not in ("admin", "viewer"):
        raise ValidationError("role must be admin or viewer", "role")
    if ctx.session.scalar(select(User.id).where(User.username == username)):
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, role=role,
                password_hash=hash_password(password, ctx.config.auth["bcrypt_cost"],
                                            username))
    ctx.session.add(user)
    ctx.session.flush()
    ctx.audit(Action.USER_CREATED, "user", user.id, username=username, role=role)
    return user


def get_user_by_name(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def count_users(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(User)) or 0)

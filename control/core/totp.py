"""Optional two-factor sign-in for control-plane users: RFC 6238 TOTP (pyotp).

Lifecycle: ``begin_enrollment`` stores a fresh secret and returns it with its ``otpauth://``
URI (shown once as text and QR code); ``confirm_enrollment`` with a code from the app turns it
on (audited); from then on ``sessions.sign_in`` answers the right password with a pending
session only, and ``finish_sign_in`` exchanges it and a current code for a signed-in session.
``disable`` turns it off: the user needs a current code; an admin acting on another user, or
the CLI (``hushgate users totp-reset``, an operator who lost their device), does not.

Codes: 6 digits, 30-second steps, accepted one step either side of the server clock. Each
accepted code claims its time step in ``users.totp_last_step`` with a conditional UPDATE, and
only a later step is accepted afterwards, so a code (even one observed over a shoulder or
replayed by two concurrent requests) works once: the RFC 6238 section 5.2 rule.

At rest the secret is encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from the
session secret — which lives outside the database — with the user's id as associated data,
so a database dump does not reveal it and a ciphertext copied onto another user's row does
not decrypt. Replacing the session secret therefore makes existing enrollments unreadable:
those users are told to ask for ``hushgate users totp-reset``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import or_, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from control.core import audit, sessions
from control.core.audit import Action, Actor
from control.core.base import utcnow
from control.core.config import Config
from control.core.context import Ctx
from control.core.errors import Conflict, HushgateError, NotFound, ValidationError
from control.core.models import User, WebSession

STEP_SECONDS = 30
DIGITS = 6
WINDOW = 1  # steps accepted either side of the current one (clock drift, typing time)
ISSUER = "hushgate"
_FORMAT = "v1"
_CODE_RE = re.compile(rf"[0-9]{{{DIGITS}}}")


#: Wrong codes are counted apart from wrong passwords: only someone who has the password gets
#: this far, so a hard limit here can't be used by others to lock the operator out.
CODE_SUBJECT = "user-code"


def clock() -> float:
    """Seconds since the epoch; the one place the time steps come from (tests replace it)."""
    return time.time()


class InvalidCode(ValidationError):
    """A code that is malformed, wrong, outside the window, or already used."""

    code = "invalid_code"

    def __init__(self, message: str = "that code is wrong or was already used: "
                                      "wait for the next one") -> None:
        super().__init__(message, "code")


class TotpUnavailable(HushgateError):
    """The stored secret cannot be decrypted (the session secret was replaced)."""

    code = "totp_unavailable"


class NotAllowed(HushgateError):
    code = "forbidden"


# -- the secret at rest ---------------------------------------------------------------------


def _key(config: Config) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"hushgate-totp-secret",
                info=b"aes-256-gcm v1").derive(config.session_secret())


def _aad(user_id: str) -> bytes:
    return f"hushgate-totp|{user_id}".encode()


def encrypt_secret(config: Config, user_id: str, secret: str) -> str:
    """``v1.<base64url(nonce | ciphertext | tag)>``, bound to ``user_id``."""
    nonce = os.urandom(12)
    sealed = AESGCM(_key(config)).encrypt(nonce, secret.encode("ascii"), _aad(user_id))
    return f"{_FORMAT}.{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"


def decrypt_secret(config: Config, user_id: str, stored: str) -> str:
    version, _, body = (stored or "").partition(".")
    try:
        if version != _FORMAT:
            raise ValueError(version)
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        plain = AESGCM(_key(config)).decrypt(raw[:12], raw[12:], _aad(user_id))
        return plain.decode("ascii")
    except (ValueError, InvalidTag, binascii.Error, UnicodeDecodeError):
        raise TotpUnavailable("the two-factor secret cannot be read (was the session secret "
                              "replaced?): an operator can run `hushgate users totp-reset`"
                              ) from None


# -- state ----------------------------------------------------------------------------------


def is_enabled(user: User) -> bool:
    return user.totp_enabled_at is not None and user.totp_secret_enc is not None


def state(user: User) -> str:
    """``on``, ``pending`` (set up but not confirmed with a code yet) or ``off``."""
    if is_enabled(user):
        return "on"
    return "pending" if user.totp_secret_enc is not None else "off"


@dataclass(frozen=True)
class Enrollment:
    """What the user copies into an authenticator app. Shown to that user only."""

    secret: str = field(repr=False)
    uri: str = field(repr=False)  # carries the secret

    @property
    def grouped(self) -> str:
        return " ".join(self.secret[i:i + 4] for i in range(0, len(self.secret), 4))


def _enrollment(secret: str, username: str) -> Enrollment:
    uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=username, issuer_name=ISSUER)
    return Enrollment(secret, uri)


def _user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id) if user_id and len(user_id) <= 32 else None
    if user is None:
        raise NotFound(f"unknown user {str(user_id)[:40]}")
    return user


def _clear(user: User) -> None:
    user.totp_secret_enc = None
    user.totp_enabled_at = None
    user.totp_last_step = None


# -- codes ----------------------------------------------------------------------------------


def _normalize(code: str | None) -> str | None:
    code = re.sub(r"[\s-]", "", code or "")
    return code if _CODE_RE.fullmatch(code) else None


def _accept(session: Session, config: Config, user: User, code: str | None,
            now: float | None) -> bool:
    """True when ``code`` is valid for a step within the window that is later than the last
    accepted one; that step is then claimed (atomically: a concurrent request presenting the
    same code loses the UPDATE)."""
    code = _normalize(code)
    if code is None or user.totp_secret_enc is None:
        return False
    otp = pyotp.TOTP(decrypt_secret(config, user.id, user.totp_secret_enc), digits=DIGITS,
                     interval=STEP_SECONDS)
    current = otp.timecode(clock() if now is None else now)
    last = user.totp_last_step
    matched = None
    for step in range(current - WINDOW, current + WINDOW + 1):
        if hmac.compare_digest(otp.generate_otp(step), code) and (last is None or step > last):
            matched = step
    if matched is None:
        return False
    claimed = session.execute(
        update(User).where(User.id == user.id,
                           or_(User.totp_last_step.is_(None), User.totp_last_step < matched))
        .values(totp_last_step=matched).execution_options(synchronize_session=False))
    if not claimed.rowcount:  # type: ignore[attr-defined]
        return False
    set_committed_value(user, "totp_last_step", matched)
    return True


def verify(session: Session, config: Config, user_id: str, code: str | None,
           now: float | None = None) -> bool:
    """Whether ``code`` is a current, unused code of a user with two-factor sign-in on.
    A True answer uses the code up."""
    user = session.get(User, user_id)
    if user is None or not is_enabled(user):
        return False
    return _accept(session, config, user, code, now)


# -- enrollment -----------------------------------------------------------------------------


def begin_enrollment(ctx: Ctx, user_id: str) -> Enrollment:
    """Store a fresh secret (replacing an unconfirmed one) and return it for the app.
    Nothing changes at sign-in until ``confirm_enrollment``."""
    user = _user(ctx.session, user_id)
    if is_enabled(user):
        raise Conflict("two-factor sign-in is already on: turn it off first to move it to "
                       "another device")
    secret = pyotp.random_base32()  # 32 base32 characters: 160 bits, as RFC 4226 advises
    _clear(user)
    user.totp_secret_enc = encrypt_secret(ctx.config, user.id, secret)
    ctx.session.flush()
    return _enrollment(secret, user.username)


def pending_enrollment(config: Config, user: User) -> Enrollment | None:
    """The unconfirmed enrollment of ``user`` (to show it again), or None."""
    if user.totp_secret_enc is None or is_enabled(user):
        return None
    try:
        return _enrollment(decrypt_secret(config, user.id, user.totp_secret_enc),
                           user.username)
    except TotpUnavailable:
        return None  # unreadable: the page offers a fresh start


def confirm_enrollment(ctx: Ctx, user_id: str, code: str | None,
                       now: float | None = None) -> None:
    """Turn two-factor sign-in on, once the app proves it holds the secret."""
    user = _user(ctx.session, user_id)
    if is_enabled(user):
        raise Conflict("two-factor sign-in is already on")
    if user.totp_secret_enc is None:
        raise ValidationError("start the set-up first", "code")
    if not _accept(ctx.session, ctx.config, user, code, now):
        raise InvalidCode()
    user.totp_enabled_at = utcnow()
    ctx.session.flush()
    ctx.audit(Action.USER_TOTP_ENABLED, "user", user.id)


def cancel_enrollment(ctx: Ctx, user_id: str) -> None:
    """Drop an unconfirmed set-up (an active second factor needs ``disable``)."""
    user = _user(ctx.session, user_id)
    if is_enabled(user):
        raise Conflict("two-factor sign-in is on: turning it off needs a current code")
    if user.totp_secret_enc is not None:
        _clear(user)
        ctx.session.flush()


def _may_override(ctx: Ctx, user: User) -> bool:
    """An operator at the CLI, or another, active admin."""
    if ctx.actor.kind == "cli":
        return True
    if ctx.actor.kind != "user" or ctx.actor.id == user.id:
        return False
    acting = ctx.session.get(User, ctx.actor.id)
    return acting is not None and acting.role == "admin" and not acting.disabled


def disable(ctx: Ctx, user_id: str, code: str | None = None,
            now: float | None = None) -> bool:
    """Turn two-factor sign-in off (dropping an unconfirmed set-up too). Returns whether it
    was on; audited when it was.

    The user themself must give a current code. Wrong codes count as failed sign-ins in the
    sign-in throttle, recorded before the refusal is raised: catch it inside the unit of work
    to keep the record (as with ``sessions.sign_in``). Another admin, or the CLI, needs no
    code."""
    user = _user(ctx.session, user_id)
    if user.totp_secret_enc is None:
        return False
    was_on = is_enabled(user)
    by_self = ctx.actor.kind == "user" and ctx.actor.id == user.id
    if by_self:
        if was_on:
            subject = sessions.login_subject(ctx.config, CODE_SUBJECT, user.username)
            if sessions.is_throttled(ctx.session, ctx.config, subject):
                raise sessions.SignInThrottled("too many wrong codes: wait a few minutes "
                                               "and try again")
            if not _accept(ctx.session, ctx.config, user, code, now):
                sessions.record_failure(ctx.session, subject)
                raise InvalidCode()
    elif not _may_override(ctx, user):
        raise NotAllowed("only the user (with a current code) or an admin can turn off "
                         "two-factor sign-in")
    _clear(user)
    ctx.session.flush()
    if was_on:
        ctx.audit(Action.USER_TOTP_DISABLED, "user", user.id,
                  method="code" if by_self else "reset")
    return was_on


# -- the second sign-in step ----------------------------------------------------------------


def finish_sign_in(session: Session, config: Config, pending_sid: str, code: str | None,
                   now: float | None = None) -> sessions.SignedIn:
    """Exchange a pending sign-in session and a current code for a signed-in user session
    (a new token; the pending one ends).

    The pending session must be at most ``sessions.PENDING_SECONDS`` old. Wrong codes count
    in the same throttle as wrong passwords and are audited; once throttled the pending
    session ends and the password is needed again. Refusals raise after writing, so the
    caller catches them inside its transaction (as with ``sessions.sign_in``)."""
    row = session.get(WebSession, pending_sid) if pending_sid else None
    fresh = (row is not None and row.revoked_at is None
             and row.principal_kind == sessions.PENDING
             and utcnow() - row.created_at <= timedelta(seconds=sessions.PENDING_SECONDS))
    user = session.get(User, row.principal_id) if fresh and row is not None else None
    if row is None or user is None or user.disabled or not is_enabled(user):
        if row is not None:
            sessions.end(session, row.id)
        raise sessions.SignInExpired("the sign-in timed out: enter your name and password "
                                     "again")
    subject = sessions.login_subject(config, CODE_SUBJECT, user.username)
    if sessions.is_throttled(session, config, subject):
        sessions.end(session, row.id)
        raise sessions.SignInThrottled("too many failed sign-ins: wait a few minutes and try "
                                       "again")
    try:
        ok = _accept(session, config, user, code, now)
    except TotpUnavailable:
        sessions.end(session, row.id)
        raise
    if not ok:
        sessions.record_failure(session, subject)
        audit.record(session, config.audit_hmac_key(), Actor("user", user.id),
                     Action.USER_SIGN_IN_FAILED, "user", user.id, factor="totp")
        raise InvalidCode()
    sessions.end(session, row.id)
    sessions.clear_failures(session, subject)
    return sessions.complete_sign_in(session, config, "user", user.id,
                                     sessions.login_subject(config, "user", user.username),
                                     factor="totp")

"""Two-factor sign-in in the domain core: enrollment, the ±1 step window, replay, encryption at
rest, who may turn it off, and the pending second sign-in step. Time steps come from fixed
instants (``now=``), never from the wall clock."""

from __future__ import annotations

import copy
from datetime import timedelta

import pyotp
import pytest
from sqlalchemy import func, select, update

from control.core import accounts, sessions, totp
from control.core.audit import Actor
from control.core.base import utcnow
from control.core.config import load_config
from control.core.errors import Conflict
from control.core.models import AuditEvent, LoginFailure, User, WebSession

T0 = 1_900_000_005.0  # a fixed instant, 5 s into its 30 s step
PW = "ops password 123"


def code_at(secret: str, t: float) -> str:
    return pyotp.TOTP(secret).at(t)


def _events(db, action: str) -> list[AuditEvent]:
    with db.read_transaction() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                              .order_by(AuditEvent.seq)))
        s.expunge_all()
        return rows


def _failures(db) -> int:
    with db.read_transaction() as s:
        return s.scalar(select(func.count()).select_from(LoginFailure))


def _user(db, user_id: str) -> User:
    with db.read_transaction() as s:
        user = s.get(User, user_id)
        s.expunge_all()
        return user


@pytest.fixture
def ops(uow) -> str:
    with uow() as ctx:
        return accounts.create_user(ctx, username="ops", password=PW, role="admin").id


@pytest.fixture
def secret(uow, ops) -> str:
    """``ops`` with two-factor sign-in on, confirmed by the code of T0's step."""
    with uow(Actor("user", ops)) as ctx:
        enrollment = totp.begin_enrollment(ctx, ops)
        totp.confirm_enrollment(ctx, ops, code_at(enrollment.secret, T0), now=T0)
    return enrollment.secret


def test_enrollment_is_active_only_after_a_valid_code(uow, db, config, ops):
    with uow(Actor("user", ops)) as ctx:
        enrollment = totp.begin_enrollment(ctx, ops)
    assert enrollment.uri.startswith("otpauth://totp/hushgate:ops?")
    assert f"secret={enrollment.secret}" in enrollment.uri and "issuer=hushgate" in enrollment.uri
    assert len(enrollment.secret) == 32  # 160 bits
    assert totp.state(_user(db, ops)) == "pending"
    # A started but unconfirmed set-up changes nothing at sign-in.
    with db.transaction() as s:
        assert not sessions.sign_in(s, config, "user", "ops", PW).needs_code
    with pytest.raises(totp.InvalidCode), uow(Actor("user", ops)) as ctx:
        totp.confirm_enrollment(ctx, ops, code_at(enrollment.secret, T0 + 300), now=T0)
    assert totp.state(_user(db, ops)) == "pending"
    assert _events(db, "user.totp_enabled") == []
    with uow(Actor("user", ops)) as ctx:
        totp.confirm_enrollment(ctx, ops, code_at(enrollment.secret, T0), now=T0)
    assert totp.state(_user(db, ops)) == "on"
    [event] = _events(db, "user.totp_enabled")
    assert event.actor == f"user:{ops}" and event.target_id == ops
    with pytest.raises(Conflict), uow(Actor("user", ops)) as ctx:
        totp.begin_enrollment(ctx, ops)  # a second device only after turning it off


def test_window_of_one_step_and_no_replay(db, config, ops, secret):
    def check(code: str, now: float) -> bool:
        with db.transaction() as s:
            return totp.verify(s, config, ops, code, now=now)

    assert not check(code_at(secret, T0), T0)  # used by the confirmation
    assert check(code_at(secret, T0 + 30), T0 + 30)
    assert not check(code_at(secret, T0 + 30), T0 + 30)  # the same code twice
    assert not check(code_at(secret, T0), T0 + 30)  # an earlier step, though in the window
    assert not check(code_at(secret, T0 + 120), T0 + 30)  # three steps ahead: outside
    assert check(code_at(secret, T0 + 90), T0 + 60)  # one step ahead: clock drift
    assert not check(code_at(secret, T0 + 60), T0 + 60)  # not later than the last one used
    assert not check(code_at(secret, T0 + 150), T0 + 210)  # two steps behind: outside
    spaced = code_at(secret, T0 + 210)
    assert check(f"{spaced[:3]} {spaced[3:]}", T0 + 210)
    for bad in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦", None):
        assert not check(bad, T0 + 600)
    assert _user(db, ops).totp_last_step == int((T0 + 210) // 30)


def test_a_concurrent_use_of_the_same_code_loses(db, config, ops, secret):
    code = code_at(secret, T0 + 30)
    with db.transaction() as s:
        s.get(User, ops)  # this request loaded the row before the other one committed...
        s.execute(update(User).where(User.id == ops)
                  .values(totp_last_step=int((T0 + 30) // 30))
                  .execution_options(synchronize_session=False))
        # ...so only the conditional UPDATE can see that the step is taken.
        assert not totp.verify(s, config, ops, code, now=T0 + 30)


def test_secret_is_encrypted_and_bound_to_its_user(db, config, ops, secret, uow, monkeypatch):
    stored = _user(db, ops).totp_secret_enc
    assert stored.startswith("v1.") and secret not in stored
    assert totp.decrypt_secret(config, ops, stored) == secret
    with uow() as ctx:
        other = accounts.create_user(ctx, username="other", password=PW).id
    with pytest.raises(totp.TotpUnavailable):
        totp.decrypt_secret(config, other, stored)  # copied onto another row: useless
    monkeypatch.setenv("HUSHGATE_SESSION_SECRET", "a different session secret " * 2)
    rotated = load_config(overrides=copy.deepcopy(config.raw))
    with pytest.raises(totp.TotpUnavailable, match="totp-reset"):
        totp.decrypt_secret(rotated, ops, stored)
    with db.transaction() as s:
        pending = sessions.sign_in(s, rotated, "user", "ops", PW)
    with db.transaction() as s, pytest.raises(totp.TotpUnavailable):
        try:
            totp.finish_sign_in(s, rotated, sessions.token_id(pending.token),
                                code_at(secret, T0 + 30), now=T0 + 30)
        finally:
            s.commit()
    with db.read_transaction() as s:
        assert s.scalar(select(WebSession.revoked_at)) is not None


def test_who_may_turn_it_off(uow, db, config, ops, secret):
    with uow() as ctx:
        viewer = accounts.create_user(ctx, username="viewer1", password=PW, role="viewer").id
        admin2 = accounts.create_user(ctx, username="admin2", password=PW).id
    with pytest.raises(totp.NotAllowed), uow(Actor("user", viewer)) as ctx:
        totp.disable(ctx, ops)
    with pytest.raises(totp.NotAllowed), uow(Actor("api", ops)) as ctx:
        totp.disable(ctx, ops)
    # The user themself needs a current code; a wrong one counts as a failed sign-in.
    for wrong in (None, code_at(secret, T0)):
        with uow(Actor("user", ops)) as ctx, pytest.raises(totp.InvalidCode):
            totp.disable(ctx, ops, code=wrong, now=T0 + 30)
    assert _failures(db) == 2 and totp.state(_user(db, ops)) == "on"
    with uow(Actor("user", ops)) as ctx:
        assert totp.disable(ctx, ops, code=code_at(secret, T0 + 30), now=T0 + 30)
    assert totp.state(_user(db, ops)) == "off"
    assert _user(db, ops).totp_secret_enc is None
    # Another admin needs none.
    with uow(Actor("user", ops)) as ctx:
        enrollment = totp.begin_enrollment(ctx, ops)
        totp.confirm_enrollment(ctx, ops, code_at(enrollment.secret, T0), now=T0)
    with uow(Actor("user", admin2)) as ctx:
        assert totp.disable(ctx, ops)
    with uow(Actor("user", admin2)) as ctx:
        assert not totp.disable(ctx, ops)  # already off: nothing to audit
    events = _events(db, "user.totp_disabled")
    assert [(e.actor, e.details) for e in events] == [
        (f"user:{ops}", {"method": "code"}), (f"user:{admin2}", {"method": "reset"})]


def test_sign_in_needs_the_code_and_the_password_step_keeps_the_failures(db, config, ops,
                                                                         secret):
    with db.transaction() as s, pytest.raises(sessions.SignInRefused):
        sessions.sign_in(s, config, "user", "ops", "wrong password")
    with db.transaction() as s:
        pending = sessions.sign_in(s, config, "user", "ops", PW)
    assert pending.needs_code and pending.kind == "pending"
    assert _failures(db) == 1  # not cleared by the right password alone
    assert _events(db, "user.signed_in") == []
    sid = sessions.token_id(pending.token)
    with db.transaction() as s, pytest.raises(totp.InvalidCode):
        totp.finish_sign_in(s, config, sid, code_at(secret, T0), now=T0 + 30)  # replayed
    assert _failures(db) == 2
    [failed] = [e for e in _events(db, "user.sign_in_failed") if e.details]
    assert failed.details == {"factor": "totp"} and failed.actor == f"user:{ops}"
    with db.transaction() as s:
        signed_in = totp.finish_sign_in(s, config, sid, code_at(secret, T0 + 30), now=T0 + 30)
    assert signed_in.kind == "user" and signed_in.principal_id == ops
    assert _failures(db) == 0
    [event] = _events(db, "user.signed_in")
    assert event.details == {"factor": "totp"}
    with db.read_transaction() as s:
        rows = {r.principal_kind: r for r in s.scalars(select(WebSession))}
        assert rows["pending"].revoked_at is not None and rows["user"].revoked_at is None
        assert sessions.load(s, config, signed_in.token) is not None
    with db.transaction() as s, pytest.raises(sessions.SignInExpired):
        totp.finish_sign_in(s, config, sid, code_at(secret, T0 + 60), now=T0 + 60)  # used up


def test_pending_sign_in_expires_and_is_revocable(db, config, uow, ops, secret):
    with db.transaction() as s:
        pending = sessions.sign_in(s, config, "user", "ops", PW)
    with db.transaction() as s:
        s.execute(update(WebSession).values(
            created_at=utcnow() - timedelta(seconds=sessions.PENDING_SECONDS + 1)))
    with db.transaction() as s, pytest.raises(sessions.SignInExpired):
        try:
            totp.finish_sign_in(s, config, sessions.token_id(pending.token),
                                code_at(secret, T0 + 30), now=T0 + 30)
        finally:
            s.commit()
    assert _failures(db) == 0  # nothing was tried
    with db.transaction() as s:
        assert sessions.purge_expired(s, config) == 1
    with db.transaction() as s:
        sessions.sign_in(s, config, "user", "ops", PW)
    with uow() as ctx:
        assert sessions.revoke_principal(ctx, "user", ops) == 1

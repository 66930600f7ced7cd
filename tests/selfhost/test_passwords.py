"""Password management: operators change, set and lose passwords; account holders reset a
forgotten one or accept an invite through a single-use link delivered over real SMTP."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from selfhost_helpers import reconfigured
from sqlalchemy import func, select, text, update

from control.core import accounts, admin_tokens, notify, passwords, sessions
from control.core.audit import Actor
from control.core.base import utcnow
from control.core.config import load_config
from control.core.context import Ctx
from control.core.errors import ConfigError, ValidationError
from control.core.models import AuditEvent, Notification, PasswordToken, User, WebSession

OLD_PW, NEW_PW = "first password 1", "second password 2"
LINK_RE = re.compile(r"(http://\S+/portal/password/)(\S+)")


def _holder(uow, email="grace@example.com", password=OLD_PW) -> str:
    with uow() as ctx:
        return accounts.create_account(ctx, name="Grace", email=email, adult_attested=True,
                                       password=password).id


def _actions(db) -> list[str]:
    with db.read_transaction() as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def _body(msg) -> str:
    return msg.get_payload(decode=True).decode()


def _deliver(db, mail_config, inbox, to):
    report = notify.deliver_pending(db, mail_config)
    assert report.sent >= 1, report
    (msg,) = inbox.to(to)
    match = LINK_RE.search(_body(msg))
    assert match, _body(msg)
    return msg, match.group(2)


def _signs_in(db, config, email, password, kind="account") -> bool:
    with db.transaction() as s:
        try:
            sessions.sign_in(s, config, kind, email, password)
        except sessions.SignInRefused:
            return False
    return True


def test_forgotten_password_is_reset_once_by_an_emailed_link(db, uow, config, mail):
    mail_config, inbox = mail
    account_id = _holder(uow)
    with db.transaction() as s:
        live = sessions.start(s, "account", account_id)
    with uow(Actor("account", "reset")) as ctx:
        assert passwords.request_reset(ctx, "GRACE@example.com") is None
    msg, token = _deliver(db, mail_config, inbox, "grace@example.com")
    assert "30 minutes" in _body(msg) and msg["Subject"].startswith("Reset your")
    token_id, _, mac = token.partition(".")
    # Nothing stored can rebuild the link: the MAC half is in no table.
    with db.read_transaction() as s:
        stored = [str(row) for t in ("password_tokens", "notifications", "audit_events")
                  for row in s.execute(text(f"SELECT * FROM {t}"))]  # noqa: S608
        assert any(token_id in r for r in stored)
        assert not any(mac in r for r in stored)
        assert passwords.check_link(s, config, token) == "reset"

    with uow(Actor("account", "reset")) as ctx, pytest.raises(ValidationError):
        passwords.set_password_with_token(ctx, token, "short")  # too short: link not spent
    with uow(Actor("account", "reset")) as ctx:
        passwords.set_password_with_token(ctx, token, NEW_PW)
    assert _signs_in(db, config, "grace@example.com", NEW_PW)
    assert not _signs_in(db, config, "grace@example.com", OLD_PW)
    with db.read_transaction() as s:
        assert sessions.load(s, config, live) is None  # sessions opened before were ended
    with uow(Actor("account", "reset")) as ctx, pytest.raises(passwords.InvalidLink):
        passwords.set_password_with_token(ctx, token, "third password 3")  # single use
    assert _signs_in(db, config, "grace@example.com", NEW_PW)
    actions = _actions(db)
    assert actions.count("account.password_reset_requested") == 1
    assert actions.count("account.password_reset") == 1


def test_unknown_or_inactive_address_answers_the_same_and_sends_nothing(db, uow):
    gone = _holder(uow, "gone@example.com")
    with uow() as ctx:
        accounts.delete_account(ctx, gone)
    before = _actions(db)
    with db.read_transaction() as s:
        notes = s.scalar(select(func.count()).select_from(Notification))
    for email in ("nobody@example.com", "gone@example.com", "not an email", "", "a@" * 200):
        with uow(Actor("account", "reset")) as ctx:
            assert passwords.request_reset(ctx, email) is None
    assert _actions(db) == before
    with db.read_transaction() as s:
        assert s.scalar(select(func.count()).select_from(PasswordToken)) == 0
        assert s.scalar(select(func.count()).select_from(Notification)) == notes


@pytest.mark.parametrize("tamper", ["mac", "id", "expired", "malformed"])
def test_forged_or_expired_links_are_refused(db, uow, config, mail, tamper):
    mail_config, inbox = mail
    _holder(uow)
    with uow() as ctx:
        passwords.request_reset(ctx, "grace@example.com")
    _, token = _deliver(db, mail_config, inbox, "grace@example.com")
    token_id, _, mac = token.partition(".")
    if tamper == "mac":
        token = f"{token_id}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"
    elif tamper == "id":
        token = f"{'0' * 32}.{mac}"
    elif tamper == "malformed":
        token = token_id
    else:
        with db.transaction() as s:
            s.execute(update(PasswordToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    with uow() as ctx, pytest.raises(passwords.InvalidLink) as err:
        passwords.set_password_with_token(ctx, token, NEW_PW)
    assert token_id not in str(err.value)
    assert _signs_in(db, config, "grace@example.com", OLD_PW)


def test_repeated_requests_send_one_message_and_a_new_link_retires_the_old(db, uow, mail):
    mail_config, inbox = mail
    _holder(uow)
    for _ in range(3):
        with uow() as ctx:
            passwords.request_reset(ctx, "grace@example.com")
    _, first = _deliver(db, mail_config, inbox, "grace@example.com")
    with db.transaction() as s:  # a minute later
        s.execute(update(PasswordToken).values(created_at=utcnow() - timedelta(minutes=2)))
    with uow() as ctx:
        passwords.request_reset(ctx, "grace@example.com")
    assert notify.deliver_pending(db, mail_config).sent == 1
    second = LINK_RE.search(_body(inbox.to("grace@example.com")[1])).group(2)
    assert second != first
    with uow() as ctx, pytest.raises(passwords.InvalidLink):
        passwords.set_password_with_token(ctx, first, NEW_PW)
    with uow() as ctx:
        passwords.set_password_with_token(ctx, second, NEW_PW)


def test_an_invited_account_sets_its_first_password(db, uow, config, mail):
    mail_config, inbox = mail
    with uow() as ctx:
        account_id = accounts.create_account(ctx, name="Ivy", email="ivy@example.com",
                                             adult_attested=True).id
        passwords.invite_account(ctx, account_id)
    msg, token = _deliver(db, mail_config, inbox, "ivy@example.com")
    assert "72 hours" in _body(msg)
    with db.read_transaction() as s:
        assert passwords.check_link(s, config, token) == "invite"
    with uow(Actor("account", "invite")) as ctx:
        passwords.set_password_with_token(ctx, token, NEW_PW)
    assert _signs_in(db, config, "ivy@example.com", NEW_PW)
    with uow() as ctx, pytest.raises(ValidationError, match="already has a password"):
        passwords.invite_account(ctx, account_id)
    with db.read_transaction() as s:
        details = s.scalars(select(AuditEvent.details).where(
            AuditEvent.action == "account.password_reset")).one()
    assert details == {"purpose": "invite"} and "account.invited" in _actions(db)


def _usable_at(db, config, token, monkeypatch, later: timedelta) -> bool:
    """Whether the link is still accepted ``later`` from now."""
    with monkeypatch.context() as m, db.read_transaction() as s:
        m.setattr(passwords, "utcnow", lambda: utcnow() + later)
        try:
            passwords.check_link(s, config, token)
        except passwords.InvalidLink:
            return False
    return True


def test_a_reset_link_lasts_the_configured_minutes(db, uow, mail, monkeypatch):
    mail_config, inbox = mail
    config = reconfigured(mail_config, control={"password_reset_minutes": 10})
    _holder(uow)
    with db.transaction() as s:
        passwords.request_reset(Ctx(s, config, Actor("account", "reset")), "grace@example.com")
    msg, token = _deliver(db, config, inbox, "grace@example.com")
    assert "within 10 minutes" in _body(msg)
    assert _usable_at(db, config, token, monkeypatch, timedelta(minutes=9))
    assert not _usable_at(db, config, token, monkeypatch, timedelta(minutes=11))


def test_an_invite_link_uses_the_public_url_and_the_configured_hours(db, mail, monkeypatch):
    mail_config, inbox = mail
    config = reconfigured(mail_config, control={"public_url": "https://gateway.example.com/",
                                                "invite_hours": 48})
    with db.transaction() as s:
        ctx = Ctx(s, config, Actor("cli", "test-admin"))
        account_id = accounts.create_account(ctx, name="Ivy", email="ivy@example.com",
                                             adult_attested=True).id
        passwords.invite_account(ctx, account_id)
    assert notify.deliver_pending(db, config).sent == 1
    (msg,) = inbox.to("ivy@example.com")
    match = re.search(r"https://gateway\.example\.com/portal/password/(\S+)", _body(msg))
    assert match, _body(msg)
    assert "within 48 hours" in _body(msg) and "127.0.0.1" not in _body(msg)
    assert _usable_at(db, config, match.group(1), monkeypatch, timedelta(hours=47))
    assert not _usable_at(db, config, match.group(1), monkeypatch, timedelta(hours=49))


@pytest.mark.parametrize(("key", "value"), [
    ("password_reset_minutes", 0), ("password_reset_minutes", 1441),
    ("password_reset_minutes", "30"), ("invite_hours", 0), ("invite_hours", 721),
    ("invite_hours", 1.5), ("public_url", "gateway.example.com"),
    ("public_url", "https://gateway.example.com/?next=x"), ("public_url", "ftp://gateway"),
    ("public_url", "https://user:secret@gateway.example.com")])  # would be in every link
def test_out_of_range_link_settings_are_refused_naming_the_key(tmp_path, key, value):
    path = tmp_path / "hushgate.yaml"
    path.write_text(f"control:\n  {key}: {value!r}\n")
    with pytest.raises(ConfigError, match=rf"^invalid configuration: control\.{key}: "):
        load_config(path)


def test_spent_and_expired_links_are_purged(db, uow, mail):
    mail_config, inbox = mail
    _holder(uow)
    with uow() as ctx:
        passwords.request_reset(ctx, "grace@example.com")
    _, token = _deliver(db, mail_config, inbox, "grace@example.com")
    with db.transaction() as s:
        assert passwords.purge_spent_tokens(s) == 0
    with uow() as ctx:
        passwords.set_password_with_token(ctx, token, NEW_PW)
    with db.transaction() as s:
        assert passwords.purge_spent_tokens(s) == 1


# -- operators ------------------------------------------------------------------------------


def _operator(uow, name: str, role: str = "admin") -> str:
    with uow() as ctx:
        return accounts.create_user(ctx, username=name, password=OLD_PW, role=role).id


def _user_signs_in(db, config, name, password) -> bool:
    return _signs_in(db, config, name, password, kind="user")


def test_an_operator_changes_their_own_password(db, uow, config):
    uid = _operator(uow, "root")
    with db.transaction() as s:
        here = sessions.start(s, "user", uid)
        elsewhere = sessions.start(s, "user", uid)
    actor = Actor("user", uid)
    with uow(actor) as ctx, pytest.raises(ValidationError, match="current password is wrong"):
        passwords.change_own_password(ctx, uid, "not my password", NEW_PW)
    with uow(actor) as ctx:
        passwords.change_own_password(ctx, uid, OLD_PW, NEW_PW,
                                      keep_session=sessions.token_id(here))
    with db.read_transaction() as s:
        assert sessions.load(s, config, here) is not None
        assert sessions.load(s, config, elsewhere) is None
        ev = s.execute(select(AuditEvent.actor, AuditEvent.target_id, AuditEvent.details)
                       .where(AuditEvent.action == "user.password_changed")).one()
    assert tuple(ev) == (f"user:{uid}", uid, {"by": "self"})
    assert _user_signs_in(db, config, "root", NEW_PW)
    assert not _user_signs_in(db, config, "root", OLD_PW)


def test_an_admin_sets_an_operators_password(db, uow, config):
    _operator(uow, "root")
    viewer = _operator(uow, "watcher", "viewer")
    with db.transaction() as s:
        token = sessions.start(s, "user", viewer)
    with uow() as ctx, pytest.raises(ValidationError):
        passwords.set_user_password(ctx, "watcher", "short")
    with uow() as ctx:
        passwords.set_user_password(ctx, "watcher", NEW_PW)
    assert _user_signs_in(db, config, "watcher", NEW_PW)
    with db.read_transaction() as s:
        assert sessions.load(s, config, token) is None


def test_operators_are_deleted_but_never_the_last_admin(db, uow, config):
    root = _operator(uow, "root")
    with uow() as ctx, pytest.raises(ValidationError, match="last admin"):
        passwords.delete_user(ctx, "root")
    second = _operator(uow, "second")
    with uow() as ctx:
        _, raw = admin_tokens.create_token(ctx, second, scope="write", name="ci")
    with db.transaction() as s:
        live = sessions.start(s, "user", second)
    with uow(Actor("user", second)) as ctx, pytest.raises(ValidationError, match="your own"):
        passwords.delete_user(ctx, second)
    with uow(Actor("user", root)) as ctx:
        passwords.delete_user(ctx, "second")
    verifier = admin_tokens.TokenVerifier(bcrypt_cost=4)
    with db.read_transaction() as s:
        assert s.get(User, second) is None
        assert sessions.load(s, config, live) is None
        with pytest.raises(Exception, match="invalid API token"):
            verifier.verify(s, raw)
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "user.deleted")).one()
        assert ev.details == {"username": "second", "tokens_removed": 1}
        assert s.scalar(select(func.count()).select_from(WebSession)
                        .where(WebSession.revoked_at.is_(None))) == 0
    with uow() as ctx, pytest.raises(ValidationError, match="last admin"):
        passwords.delete_user(ctx, root)
    with uow() as ctx:  # a disabled admin doesn't count as the one left
        ctx.session.execute(update(User).where(User.id == root).values(disabled=True))
        third = accounts.create_user(ctx, username="third", password=OLD_PW).id
    with uow() as ctx, pytest.raises(ValidationError, match="last admin"):
        passwords.delete_user(ctx, third)
    with uow() as ctx:
        passwords.delete_user(ctx, root)

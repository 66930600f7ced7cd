"""One sender: opt-out honoured for non-essential mail only; nothing secret in any message."""

from __future__ import annotations

import pytest
from lifecycle_helpers import make_config

from control.core import accounts, keys, notify
from control.core.db import Database
from control.core.errors import ValidationError
from control.core.models import Notification


@pytest.fixture
def mail(tmp_path, db_url, smtp_server):
    inbox, port = smtp_server
    config = make_config(tmp_path, db_url, smtp={"host": "127.0.0.1", "port": port},
                         policy={"operator_name": "Acme AI", "contact_email": "dpo@acme.test"})
    db = Database.from_config(config)
    yield inbox, config, db
    db.dispose()


def _people(db, config):
    from control.core.audit import Actor
    from control.core.context import Ctx

    with db.transaction() as s:
        ctx = Ctx(s, config, Actor("test", "notify"))
        inn = accounts.create_account(ctx, name="In", email="in@example.com",
                                      adult_attested=True)
        out = accounts.create_account(ctx, name="Out", email="out@example.com",
                                      adult_attested=True, opt_out_non_essential=True)
        key, raw = keys.create_key(ctx, out.id)
    return inn.id, out.id, key.key_id, raw


def test_opt_out_skips_non_essential_but_not_essential(mail):
    inbox, config, db = mail
    inn, out, key_id, raw = _people(db, config)
    with db.transaction() as s:
        for who in (inn, out):
            notify.send(s, config, who, "product_update", title="New models are available")
    # creating Out's key queued the essential key-created notice by itself
    report = notify.deliver_pending(db, config)
    assert (report.sent, report.skipped, report.failed) == (2, 0, 0)
    assert [m["Subject"] for m in inbox.to("in@example.com")] == ["News from Acme AI"]
    assert [m["Subject"] for m in inbox.to("out@example.com")] == ["A new API key was created"]
    with db.read_transaction() as s:
        statuses = sorted((n.kind, n.status) for n in s.query(Notification)
                          .filter(Notification.account_id == out))
    assert statuses == [("key_created", "sent"), ("product_update", "skipped")]
    # the message names the key id, never the secret
    body = inbox.to("out@example.com")[0].get_payload()
    assert key_id in body and raw not in body and "dpo@acme.test" in body
    assert all(raw.encode() not in r for r in inbox.raw)


def test_opting_out_after_queueing_is_honoured_at_delivery(mail):
    inbox, config, db = mail
    inn, _, _, _ = _people(db, config)
    with db.transaction() as s:
        notify.send(s, config, inn, "product_update", title="Hello")
    from control.core.audit import Actor
    from control.core.context import Ctx
    with db.transaction() as s:
        accounts.set_preferences(Ctx(s, config, Actor("test", "x")), inn,
                                 opt_out_non_essential=True)
    report = notify.deliver_pending(db, config)
    assert (report.sent, report.skipped) == (1, 1)  # Out's key-created notice still goes
    assert inbox.to("in@example.com") == []


@pytest.mark.parametrize("kind, params", [
    ("key_created", {"key_id": "hg_AAAAAAAAAAAA_" + "B" * 38}),  # a whole key is not a key id
    ("key_created", {"key_id": "abc", "extra": "x"}),
    ("key_created", {}),
    ("product_update", {"title": "see hg_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBB"}),
    ("product_update", {"title": "line\nbreak"}),
    ("low_balance", {"available": "lots", "threshold": "1.00 USD"}),
    ("nonsense", {}),
    ("password_reset", {"token_id": "x", "minutes": 30}),
    ("password_reset", {"token_id": "a" * 32, "minutes": 30, "link": "https://evil/"}),
    ("account_invite", {"token_id": "a" * 32, "hours": "72"}),
])
def test_unsafe_parameters_are_refused(db, config, funded_account, kind, params):
    with db.transaction() as s, pytest.raises(ValidationError):
        notify.send(s, config, funded_account, kind, **params)


def test_essential_flags():
    essential = {k for k, v in notify.KINDS.items() if v.essential}
    assert essential == {"key_created", "key_revoked", "low_balance", "account_deleted",
                         "policy_changed", "password_reset", "account_invite"}
    assert not notify.KINDS["product_update"].essential


def test_without_smtp_messages_wait(db, config, funded_account):
    with db.transaction() as s:
        notify.send(s, config, funded_account, "low_balance", available="0.50 USD",
                    threshold="1.00 USD")
    report = notify.deliver_pending(db, config)
    assert report.disabled and report.sent == 0
    with db.read_transaction() as s:
        assert s.query(Notification).one().status == "queued"


def test_unreachable_server_is_retried_then_failed(tmp_path, db_url, funded_account):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = make_config(tmp_path, db_url, smtp={"host": "127.0.0.1", "port": port,
                                                 "timeout_seconds": 2})
    db = Database.from_config(config)
    try:
        with db.transaction() as s:
            notify.send(s, config, funded_account, "account_deleted", days=30)
        for _ in range(notify.MAX_ATTEMPTS - 1):
            assert notify.deliver_pending(db, config).retrying == 1
        assert notify.deliver_pending(db, config).failed == 1
        with db.read_transaction() as s:
            n = s.query(Notification).one()
            assert (n.status, n.attempts) == ("failed", notify.MAX_ATTEMPTS)
    finally:
        db.dispose()


def test_erased_accounts_get_nothing(mail):
    inbox, config, db = mail
    inn, _, _, _ = _people(db, config)
    from control.core import erasure
    from control.core.audit import Actor
    from control.core.context import Ctx
    with db.transaction() as s:
        erasure.erase_account(Ctx(s, config, Actor("test", "x")), inn, confirm=True)
        note = notify.send(s, config, inn, "policy_changed", last_updated="2030-01-01")
        assert note.status == "skipped"
    notify.deliver_pending(db, config)
    assert inbox.to("in@example.com") == []  # not even the deletion notice queued on erasure
    with db.read_transaction() as s:
        assert {n.status for n in s.query(Notification)
                .filter(Notification.account_id == inn)} == {"skipped"}


def test_key_and_account_events_queue_their_own_notices(mail):
    """The services send them, whichever surface (CLI, UI, API) called them."""
    inbox, config, db = mail
    from control.core.audit import Actor
    from control.core.context import Ctx

    with db.transaction() as s:
        ctx = Ctx(s, config, Actor("test", "notify"))
        acct = accounts.create_account(ctx, name="K", email="k@example.com",
                                       adult_attested=True, opt_out_non_essential=True)
        key, raw = keys.create_key(ctx, acct.id)
    with db.transaction() as s:
        ctx = Ctx(s, config, Actor("test", "notify"))
        keys.revoke_key(ctx, key.key_id)
        keys.revoke_key(ctx, key.key_id)  # already revoked: no second notice
        accounts.delete_account(ctx, acct.id)
    assert notify.deliver_pending(db, config).sent == 3
    assert [m["Subject"] for m in inbox.to("k@example.com")] == [
        "A new API key was created", "An API key was revoked", "Your account was deleted"]
    assert all(raw.encode() not in r for r in inbox.raw)


def test_low_balance_notice_once_when_a_charge_crosses_the_threshold(mail):
    inbox, config, db = mail
    from control.core import wallet
    from control.core.audit import Actor
    from control.core.context import Ctx

    threshold = config.wallet["low_balance_threshold"]
    with db.transaction() as s:
        ctx = Ctx(s, config, Actor("test", "notify"))
        acct = accounts.create_account(ctx, name="L", email="l@example.com",
                                       adult_attested=True)
        wallet.topup(ctx, acct.id, threshold + 100, idempotency_key="t1")

    def charge(amount: int) -> None:
        with db.transaction() as s:
            hold = wallet.reserve(s, acct.id, amount)
            wallet.settle(s, hold.id, amount, config=config)

    charge(50)  # still above the threshold
    assert notify.deliver_pending(db, config).sent == 0
    charge(100)  # crosses it
    charge(10)  # already below: no repeat
    assert notify.deliver_pending(db, config).sent == 1
    (msg,) = inbox.to("l@example.com")
    assert msg["Subject"] == "Your balance is low"
    from control.core.money import format_amount

    scale, cur = config.wallet["minor_unit_scale"], config.wallet["currency"]
    body = msg.get_payload(decode=True).decode()
    assert format_amount(threshold - 50, scale, cur) in body
    assert format_amount(threshold, scale, cur) in body


@pytest.mark.parametrize("scale", [1, 10**9])
def test_low_balance_notice_at_any_currency_scale_and_never_blocks_the_charge(
        tmp_path, db_url, scale, monkeypatch):
    from control.core import wallet
    from control.core.audit import Actor
    from control.core.context import Ctx
    from control.core.errors import ValidationError
    from control.core.models import Notification

    config = make_config(tmp_path, db_url, wallet={"minor_unit_scale": scale,
                                                    "low_balance_threshold": 100})
    db = Database.from_config(config)
    try:
        with db.transaction() as s:
            acct = accounts.create_account(Ctx(s, config, Actor("test", "n")), name="S",
                                           email="s@example.com", adult_attested=True)
            wallet.topup(Ctx(s, config, Actor("test", "n")), acct.id, 105,
                         idempotency_key="t")

        def charge(amount: int) -> int:
            with db.transaction() as s:
                hold = wallet.reserve(s, acct.id, amount)
                return wallet.settle(s, hold.id, amount, config=config)

        assert charge(7) == 7  # 105 -> 98 crosses 100: one notice, formatted at this scale
        with db.read_transaction() as s:
            (params,) = [n.params for n in s.query(Notification).filter_by(kind="low_balance")]
        assert params["available"].startswith("98" if scale == 1 else "0.000000098")

        def broken(*_a, **_k):
            raise ValidationError("a notice that can't be queued", "params")

        monkeypatch.setattr("control.core.notify.send", broken)
        with db.transaction() as s:  # top up above the threshold again, then cross it
            wallet.topup(Ctx(s, config, Actor("test", "n")), acct.id, 10, idempotency_key="u")
        assert charge(9) == 9  # the notice fails; the charge stands
        with db.read_transaction() as s:
            bal = wallet.get_balance(s, acct.id)
            assert bal.balance == 99 == wallet.ledger_sum(s, acct.id) and bal.held == 0
    finally:
        db.dispose()

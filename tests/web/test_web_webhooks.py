"""POST /webhooks/payments: Stripe-scheme signatures, credit once per event, refusals."""

from __future__ import annotations

import json
import time

import pytest
import stripe
from sqlalchemy import func, select
from web_helpers import sqlite_only

from control.core import wallet
from control.core.models import AuditEvent, LedgerEntry, PaymentEvent
from control.web.webhooks import to_minor_units, verify_signature

SECRET = "whsec_test_0123456789abcdef"


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch):
    monkeypatch.setenv("HUSHGATE_PAYMENT_WEBHOOK_SECRET", SECRET)


def _event(account_id: object, *, event_id: str = "evt_1", amount: int = 2500,
           kind: str = "checkout.session.completed", currency: str = "usd",
           metadata: object = None) -> str:
    """A Stripe event; ``metadata`` replaces ``{"account_id": account_id}`` when given."""
    field = "amount_total" if kind == "checkout.session.completed" else "amount_received"
    obj = {"id": "cs_1", "object": "checkout.session", field: amount, "currency": currency,
           "payment_status": "paid",
           "metadata": {"account_id": account_id} if metadata is None else metadata}
    return json.dumps({"id": event_id, "object": "event", "type": kind,
                       "data": {"object": obj}})


def _sign(payload: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    """Sign exactly the way the official stripe package does."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret,
                                                             timestamp=timestamp)


def _post(client, payload: str, header: str | None):
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return client.post("/webhooks/payments", data=payload, headers=headers)


def _state(db, account_id: str) -> tuple[int, int, int, int]:
    with db.read_transaction() as s:
        return (wallet.get_balance(s, account_id).balance,
                s.scalar(select(func.count()).select_from(LedgerEntry)),
                s.scalar(select(func.count()).select_from(AuditEvent)),
                s.scalar(select(func.count()).select_from(PaymentEvent)))


def test_signed_event_credits_once_and_is_audited(client, db, funded_account):
    payload = _event(funded_account)
    header = _sign(payload)
    # parity: the official library accepts what we accept
    assert stripe.Webhook.construct_event(payload, header, SECRET, tolerance=300)["id"] == "evt_1"
    resp = _post(client, payload, header)
    assert resp.status_code == 200 and resp.get_json()["credited"] is True
    # $25.00 -> 25 * 1_000_000 minor units
    assert _state(db, funded_account)[0] == 10_000_000 + 25_000_000
    after = _state(db, funded_account)
    replay = _post(client, payload, _sign(payload))
    assert replay.status_code == 200 and replay.get_json()["duplicate"] is True
    assert _state(db, funded_account) == after
    with db.read_transaction() as s:
        ev = s.scalar(select(AuditEvent).where(AuditEvent.action == "wallet.payment_received"))
        assert ev.actor == "webhook:payments" and ev.target_id == funded_account
        assert ev.details["amount"] == 25_000_000 and ev.details["reference"] == "evt_1"


def test_payment_intent_succeeded_is_credited(client, db, funded_account):
    payload = _event(funded_account, event_id="evt_pi", kind="payment_intent.succeeded",
                     amount=199)
    assert _post(client, payload, _sign(payload)).status_code == 200
    assert _state(db, funded_account)[0] == 10_000_000 + 1_990_000


@pytest.mark.parametrize("case", ["unsigned", "bad_secret", "tampered", "stale", "future",
                                  "garbage_header", "no_v1", "malformed", "no_id",
                                  "unknown_account", "wrong_currency", "bad_amount",
                                  "account_not_an_id", "unsigned_without_account",
                                  "forged_without_account"])
def test_refused_events_change_nothing(client, db, funded_account, case):
    payload = _event(funded_account)
    header = _sign(payload)
    now = int(time.time())
    if case == "unsigned":
        header = None
    elif case == "bad_secret":
        header = _sign(payload, "whsec_other")
    elif case == "tampered":
        payload = payload.replace("2500", "9999999")
    elif case == "stale":
        header = _sign(payload, timestamp=now - 360)  # the tolerance is 300 s
    elif case == "future":
        header = _sign(payload, timestamp=now + 360)
    elif case == "garbage_header":
        header = "t=abc,v1=zz"
    elif case == "no_v1":
        header = f"t={now},v0=abc"
    elif case == "malformed":
        payload = "{not json"
        header = _sign(payload)
    elif case == "no_id":
        payload = json.dumps({"type": "checkout.session.completed"})
        header = _sign(payload)
    elif case == "unknown_account":
        payload = _event("0" * 32)
        header = _sign(payload)
    elif case == "wrong_currency":
        payload = _event(funded_account, currency="eur")
        header = _sign(payload)
    elif case == "bad_amount":
        payload = _event(funded_account, amount=-5)
        header = _sign(payload)
    elif case == "account_not_an_id":
        payload = _event(12345)
        header = _sign(payload)
    elif case == "unsigned_without_account":
        payload = _event(None, metadata={}, kind="payment_intent.succeeded")
        header = None
    elif case == "forged_without_account":
        payload = _event(None, metadata={}, kind="payment_intent.succeeded")
        header = _sign(payload, "whsec_other")
    before = _state(db, funded_account)
    resp = _post(client, payload, header)
    assert 400 <= resp.status_code < 500, (case, resp.status_code)
    assert set(resp.get_json()["error"]) == {"code", "message", "fields"}
    assert _state(db, funded_account) == before


@pytest.mark.parametrize(("kind", "metadata", "currency"), [
    ("payment_intent.succeeded", {}, "usd"),
    ("payment_intent.succeeded", {"order": "shop-42"}, "eur"),  # another product's payment
    ("payment_intent.succeeded", {"account_id": ""}, "usd"),
    ("payment_intent.succeeded", "absent", "usd"),
    ("checkout.session.completed", {"order": "shop-42"}, "gbp"),
])
def test_payment_intent_without_account_is_acknowledged_not_credited(
        client, db, funded_account, kind, metadata, currency):
    payload = json.loads(_event(funded_account, event_id="evt_other", kind=kind,
                                currency=currency, metadata=metadata))
    if metadata == "absent":
        del payload["data"]["object"]["metadata"]
    payload = json.dumps(payload)
    before = _state(db, funded_account)
    resp = _post(client, payload, _sign(payload))
    # 200, or Stripe retries the event for days and then disables the endpoint
    assert resp.status_code == 200
    assert resp.get_json() == {"received": True, "ignored": True, "reason": "no_account"}
    assert _state(db, funded_account) == before  # no credit, no audit event, no event row
    assert _post(client, payload, _sign(payload)).status_code == 200  # a retry: the same
    assert _state(db, funded_account) == before


@sqlite_only
def test_unconfigured_secret_refuses(client, db, funded_account, monkeypatch):
    monkeypatch.delenv("HUSHGATE_PAYMENT_WEBHOOK_SECRET")
    payload = _event(funded_account)
    before = _state(db, funded_account)
    assert _post(client, payload, _sign(payload)).status_code == 503
    assert _state(db, funded_account) == before


@sqlite_only
def test_other_event_types_are_acknowledged_and_ignored(client, db, funded_account):
    payload = json.dumps({"id": "evt_x", "type": "customer.created", "data": {"object": {}}})
    before = _state(db, funded_account)
    resp = _post(client, payload, _sign(payload))
    assert resp.status_code == 200 and resp.get_json()["ignored"] is True
    assert resp.get_json()["reason"] == "event_type"
    assert _state(db, funded_account) == before


def test_signature_checks_are_pure_functions():
    body = b'{"id":"evt"}'
    header = _sign(body.decode(), timestamp=1_000_000)
    assert verify_signature(body, header, SECRET, 300, now=1_000_100) == 1_000_000
    # several v1 values (secret rotation): any match is enough
    other = _sign(body.decode(), "whsec_old", timestamp=1_000_000).split(",")[1]
    assert verify_signature(body, f"{header},{other}", SECRET, 300, now=1_000_000)
    assert to_minor_units(2500, "usd", 1_000_000) == 25_000_000
    assert to_minor_units(500, "JPY", 1) == 500
    assert to_minor_units(1234, "kwd", 1_000_000) == 1_234_000

"""Self-service top-ups end to end: the official stripe SDK creates a Checkout Session on a
local Stripe double, the double sends the signed webhook to the real Flask app, and the wallet
is credited exactly once."""

from __future__ import annotations

import logging

import pytest
from selfhost_helpers import SECRET_KEY, WEBHOOK_SECRET, reconfigured
from sqlalchemy import func, select
from stripe_double import StripeDouble

from control.core import payments, wallet
from control.core.audit import Actor
from control.core.errors import ConfigError, ValidationError
from control.core.models import AuditEvent, CheckoutSession, LedgerEntry

HOLDER = Actor("account", "holder")


def _checkout(db, config, account_id, amount):
    with db.transaction() as s:
        return payments.create_checkout(audit_ctx(s, config), account_id, amount)


def audit_ctx(session, config):
    from control.core.context import Ctx

    return Ctx(session, config, HOLDER)


def test_a_paid_checkout_credits_the_wallet_once(db, funded_account, stripe_api):
    config, double = stripe_api
    assert payments.enabled(config)
    checkout = _checkout(db, config, funded_account, 25_000_000)  # 25 USD
    assert checkout.url == f"{double.api_base}/pay/{checkout.session_id}"
    assert checkout.url.startswith(payments.checkout_origin(config) + "/")
    (call,) = double.requests
    params = call["params"]
    assert params["metadata"] == {"account_id": funded_account,
                                  "hushgate_reference": checkout.reference}
    assert params["line_items"][0]["price_data"]["unit_amount"] == "2500"  # cents
    assert params["line_items"][0]["price_data"]["currency"] == "usd"
    assert params["payment_method_types"] == ["card"] and "payment_intent_data" not in params
    assert params["success_url"].startswith("http://127.0.0.1:8090/portal/ledger?checkout=")
    assert call["idempotency_key"] == f"hushgate-checkout-{checkout.reference}"
    with db.read_transaction() as s:
        assert wallet.get_balance(s, funded_account).balance == 10_000_000  # not yet
        row = s.get(CheckoutSession, checkout.reference)
        assert (row.provider_session_id, row.amount) == (checkout.session_id, 25_000_000)

    event = double.complete(checkout.session_id)
    assert double.deliveries == [(event["id"], 200)]
    assert double.redeliver(event) == 200  # Stripe delivers at least once
    with db.read_transaction() as s:
        assert wallet.get_balance(s, funded_account).balance == 35_000_000
        credits = s.scalars(select(LedgerEntry).where(LedgerEntry.account_id == funded_account,
                                                      LedgerEntry.reference == event["id"]))
        assert [e.amount for e in credits] == [25_000_000]
        actions = list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))
    assert actions.count("wallet.checkout_created") == 1
    assert actions.count("wallet.payment_received") == 1


def test_the_payment_intent_of_a_checkout_is_acknowledged_and_credits_nothing_more(
        db, funded_account, stripe_api):
    """An endpoint also subscribed to ``payment_intent.succeeded`` gets that event for every
    hushgate checkout too, without metadata: it is answered 200 (Stripe stops retrying) and
    the payment is credited once, by ``checkout.session.completed``."""
    config, double = stripe_api
    checkout = _checkout(db, config, funded_account, 25_000_000)
    session = double.complete(checkout.session_id)["data"]["object"]
    intent = {"id": "evt_test_pi_" + checkout.reference, "object": "event",
              "type": "payment_intent.succeeded", "livemode": False,
              "data": {"object": {"id": session["payment_intent"], "object": "payment_intent",
                                  "amount": 2500, "amount_received": 2500, "currency": "usd",
                                  "status": "succeeded", "metadata": {}}}}
    assert double.redeliver(intent) == 200
    assert [status for _, status in double.deliveries] == [200, 200]
    with db.read_transaction() as s:
        assert wallet.get_balance(s, funded_account).balance == 35_000_000
        assert s.scalar(select(func.count()).select_from(LedgerEntry)
                        .where(LedgerEntry.account_id == funded_account)) == 2  # seed + 25 USD


def test_the_hosted_page_pays_and_returns_to_the_portal(db, funded_account, stripe_api):
    config, double = stripe_api
    import requests

    checkout = _checkout(db, config, funded_account, 5_000_000)
    with requests.Session() as http:
        assert "Pay 5.00 USD" in http.get(checkout.url, timeout=5).text
        paid = http.post(checkout.url, allow_redirects=False, timeout=5)
    assert paid.status_code == 303 and "/portal/ledger?checkout=paid" in paid.headers["Location"]
    with db.read_transaction() as s:
        assert wallet.get_balance(s, funded_account).balance == 15_000_000


@pytest.mark.parametrize("amount", [4_999_999, 500_000_001, 0, -5, 5_000_001])
def test_amounts_outside_the_bounds_or_below_a_cent_ask_nothing_of_stripe(
        db, funded_account, stripe_api, amount):
    config, double = stripe_api
    with pytest.raises(ValidationError) as err:
        _checkout(db, config, funded_account, amount)
    assert err.value.field == "amount"
    assert double.requests == []
    with db.read_transaction() as s:
        assert s.scalar(select(func.count()).select_from(CheckoutSession)) == 0


def test_inverted_bounds_are_a_config_error(config):
    with pytest.raises(ConfigError, match="min_amount is above"):
        payments.amount_bounds(reconfigured(config, payments={"min_amount": 9_000_000,
                                                              "max_amount": 8_000_000}))


def test_disabled_or_unconfigured_top_ups_are_refused(db, config, funded_account, monkeypatch):
    with pytest.raises(payments.PaymentsDisabled):
        _checkout(db, config, funded_account, 10_000_000)
    on = reconfigured(config, payments={"provider": "stripe"})
    monkeypatch.delenv("HUSHGATE_STRIPE_SECRET_KEY", raising=False)
    assert not payments.enabled(on)
    with pytest.raises(payments.PaymentsDisabled, match="no processor key"):
        _checkout(db, on, funded_account, 10_000_000)


def test_a_refused_key_leaks_nothing_and_records_nothing(db, funded_account, stripe_api,
                                                         monkeypatch, caplog):
    config, double = stripe_api
    wrong = "sk_test_wrong_key_abcdef987654"
    monkeypatch.setenv("HUSHGATE_STRIPE_SECRET_KEY", wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(payments.PaymentProviderError) as err:
        _checkout(db, config, funded_account, 10_000_000)
    assert "nothing was charged" in str(err.value)
    for text in (str(err.value), caplog.text):
        assert wrong not in text and wrong[-4:] not in text
    with db.read_transaction() as s:
        assert s.scalar(select(func.count()).select_from(CheckoutSession)) == 0


def test_an_unreachable_processor_is_a_clear_error(db, funded_account, config, monkeypatch):
    monkeypatch.setenv("HUSHGATE_STRIPE_SECRET_KEY", SECRET_KEY)
    with StripeDouble(SECRET_KEY, WEBHOOK_SECRET) as double:
        gone = double.api_base
    off = reconfigured(config, payments={"provider": "stripe", "api_base": gone,
                                         "timeout_seconds": 2})
    with pytest.raises(payments.PaymentProviderError):
        _checkout(db, off, funded_account, 10_000_000)


@pytest.mark.parametrize(("currency", "amount", "units"), [
    ("USD", 12_340_000, 1234), ("JPY", 500_000_000, 500), ("KWD", 1_234_000, 1234)])
def test_processor_amounts_are_exact(currency, amount, units):
    assert payments.processor_amount(amount, currency, 1_000_000) == units
    with pytest.raises(ValidationError, match="multiple of"):
        payments.processor_amount(amount + 1, currency, 1_000_000)


def test_the_portal_can_show_the_base_url_and_the_prices(config, test_ca):
    assert payments.gateway_url(config) == "http://127.0.0.1:8080/v1"
    tls = reconfigured(config, proxy={"listen_host": "::1", "tls": {
        "cert_file": test_ca["cert.pem"], "key_file": test_ca["key.pem"]}})
    assert payments.gateway_url(tls) == "https://[::1]:8080/v1"
    prices = {p.model: p for p in payments.price_list(config)}
    assert set(prices) == {"sim-gpt", "sim-embed", "sim-claude"}
    claude = prices["sim-claude"]
    assert (claude.api_format, claude.input, claude.output) == ("anthropic", 3_000_000,
                                                                15_000_000)
    assert claude.text == {"input": "3.000000 USD", "output": "15.000000 USD",
                           "cached_input": "0.300000 USD"}
    assert prices["sim-embed"].endpoints == ("embeddings",)


def test_the_checkout_origin_is_stripes_unless_a_double_serves_it(config):
    on = reconfigured(config, payments={"provider": "stripe"})
    assert payments.checkout_origin(on) == "https://checkout.stripe.com"

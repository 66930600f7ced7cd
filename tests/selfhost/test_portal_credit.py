"""The portal as a new account holder sees it: where to send requests, what they cost, and
"Add credit" through the processor (the local Stripe double), credited by the signed webhook."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from control.core import wallet
from control.core.models import Account, CheckoutSession
from control.web import create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))
from web_helpers import Browser  # noqa: E402

SIGNUP = {"name": "Mary Jackson", "email": "mary@example.com",
          "password": "a long enough password", "password2": "a long enough password",
          "adult": "yes"}


@pytest.fixture
def portal(stripe_api, db):
    """(a browser on a portal with top-ups enabled, the Stripe double)."""
    enabled, double = stripe_api
    return Browser(create_app(enabled, db, TESTING=True).test_client()), double


def _account_id(db) -> str:
    with db.read_transaction() as s:
        return s.scalar(select(Account.id).where(Account.email == SIGNUP["email"]))


def test_a_new_holder_sees_the_base_url_prices_and_adds_credit(portal, db, config):
    b, double = portal
    assert b.post("/portal/signup", SIGNUP).status_code == 302
    home = b.get("/portal/").get_data(as_text=True)
    assert "http://127.0.0.1:8080/v1" in home
    for model in config.models:
        assert f"<code>{model}</code>" in home
    assert "Add credit" in home

    resp = b.post("/portal/credit", {"amount": "25"}, page="/portal/")
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    url = re.search(r'id="continue-to-payment" href="([^"]+)"', page).group(1)
    assert url.startswith(double.api_base + "/pay/")
    account_id = _account_id(db)
    with db.read_transaction() as s:
        assert wallet.get_balance(s, account_id).balance == 0  # not before the payment
    with requests.Session() as http:  # the holder pays on the processor's page
        paid = http.post(url.replace("&amp;", "&"), allow_redirects=False, timeout=5)
    assert paid.status_code == 303
    with db.read_transaction() as s:
        assert wallet.get_balance(s, account_id).balance == 25 * 1_000_000
    assert "25.00" in b.get("/portal/").get_data(as_text=True)


@pytest.mark.parametrize("amount", ["", "abc", "0", "-5", "0.001", "999999999999"])
def test_a_bad_amount_is_a_form_error_and_asks_nothing_of_the_processor(portal, db, amount):
    b, double = portal
    assert b.post("/portal/signup", SIGNUP).status_code == 302
    resp = b.post("/portal/credit", {"amount": amount}, page="/portal/")
    assert 400 <= resp.status_code < 500
    assert 'class="error"' in resp.get_data(as_text=True)
    assert double.requests == []
    with db.read_transaction() as s:
        assert s.scalar(select(func.count()).select_from(CheckoutSession)) == 0


def test_without_top_ups_the_portal_offers_none(config, db):
    b = Browser(create_app(config, db, TESTING=True).test_client())
    assert b.post("/portal/signup", SIGNUP).status_code == 302
    home = b.get("/portal/").get_data(as_text=True)
    assert "Add credit" not in home and "/v1" in home
    assert b.post("/portal/credit", {"amount": "5"}, page="/portal/").status_code >= 400

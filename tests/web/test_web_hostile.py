"""Hostile input gets a clear 4xx, never a 500 — on SQLite and on PostgreSQL — and the
smaller findings of the trust review (open redirect, sign-up password, token list by role,
webhook idempotency across accounts, payments for closed accounts)."""

from __future__ import annotations

import json

import pytest
import stripe
from sqlalchemy import func, select
from web_helpers import ADMIN_PW, Browser, csrf_from

from control.core import accounts, wallet
from control.core.models import AuditEvent, LedgerEntry

SECRET = "whsec_test_0123456789abcdef"


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch):
    monkeypatch.setenv("HUSHGATE_PAYMENT_WEBHOOK_SECRET", SECRET)


def _no_500(resp, *statuses):
    assert resp.status_code != 500, resp.get_data(as_text=True)[:300]
    if statuses:
        assert resp.status_code in statuses, (resp.status_code, resp.get_data(as_text=True)[:300])
    return resp


# -- anonymous ------------------------------------------------------------------------------


def test_a_huge_webhook_timestamp_is_refused(client):
    resp = client.post("/webhooks/payments", data="{}",
                       headers={"Stripe-Signature": "t=" + "9" * 309 + ",v1=" + "0" * 64,
                                "Content-Type": "application/json"})
    _no_500(resp, 400)
    assert resp.get_json()["error"]["code"] == "signature_invalid"


@pytest.mark.parametrize("where", ["/admin/login", "/portal/login"])
def test_a_nul_byte_in_the_sign_in_name_is_refused(client, where):
    b = Browser(client)
    name = "username" if where == "/admin/login" else "email"
    resp = b.post(where, {name: "ro\x00ot@example.com", "password": "x" * 12})
    _no_500(resp, 400)
    assert "NUL" in resp.get_data(as_text=True)


def test_next_with_a_newline_after_sign_in_goes_home(client, admin_user):
    b = Browser(client)
    token = b.token("/admin/login")
    resp = client.post("/admin/login?next=/%0A/x",
                       data={"username": "root", "password": ADMIN_PW, "csrf_token": token})
    _no_500(resp, 302)
    assert resp.headers["Location"] == "/admin/"


@pytest.mark.parametrize("target", ["/%09/evil.example/", "//evil.example/", "/\\evil.example",
                                    "/%0D%0A/evil.example", "https://evil.example/",
                                    "/ /evil.example"])
def test_next_accepts_same_origin_paths_only(client, admin_user, target):
    b = Browser(client)
    token = b.token("/admin/login")
    resp = client.post(f"/admin/login?next={target}",
                       data={"username": "root", "password": ADMIN_PW, "csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/"


# -- with a token ---------------------------------------------------------------------------


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/accounts?q=a%00b", None),
    ("GET", "/accounts/ab%00cd", None),
    ("GET", "/audit/events?actor=x%00", None),
    ("POST", "/accounts", {"name": "N\x00", "email": "n@example.com", "adult_attested": True}),
    ("POST", "/accounts", {"name": "\ud800", "email": "n@example.com",
                           "adult_attested": True}),
    ("PATCH", "/accounts/{aid}", {"company": "\x00"}),
])
def test_nul_bytes_and_lone_surrogates_are_refused(api, funded_account, method, path, body):
    kwargs = {}
    if body is not None:
        kwargs = {"data": json.dumps(body), "content_type": "application/json"}
    resp = _no_500(api(method, path.replace("{aid}", funded_account), **kwargs), 400, 404)
    assert resp.get_json()["error"]["code"] in ("bad_request", "not_found")


def test_an_over_long_top_up_reference_is_refused(api, funded_account):
    resp = api("POST", f"/accounts/{funded_account}/wallet/topup",
               json={"amount": 5, "reference": "r" * 101}, headers={"Idempotency-Key": "k1"})
    _no_500(resp, 422)
    assert resp.get_json()["error"]["fields"] == {"reference": "at most 100 characters"}


def test_an_expiry_past_the_end_of_time_is_refused(api, funded_account):
    resp = api("POST", f"/accounts/{funded_account}/keys",
               json={"expires_at": "9999-12-31T23:59:59-14:00"})
    _no_500(resp, 422)
    assert "expires_at" in resp.get_json()["error"]["fields"]


def test_json_nested_50000_deep_is_refused(api, funded_account):
    resp = api("PATCH", f"/accounts/{funded_account}", data="[" * 50000 + "]" * 50000,
               content_type="application/json")
    _no_500(resp, 400)
    assert "nested" in resp.get_json()["error"]["message"]


@pytest.mark.parametrize("path", ["/audit/events?before=99999999999999999999",
                                  "/accounts?offset=99999999999999999999",
                                  "/accounts/{aid}/ledger?before=-99999999999999999999",
                                  "/records?before=18446744073709551616"])
def test_api_cursors_past_64_bits_are_refused(api, funded_account, path):
    resp = api("GET", path.replace("{aid}", funded_account))
    _no_500(resp, 400)


@pytest.mark.parametrize("path", ["/admin/accounts?page=99999999999999999999",
                                  "/admin/audit?before=99999999999999999999",
                                  "/admin/records?before=99999999999999999999",
                                  "/admin/accounts/{aid}/ledger?before=99999999999999999999"])
def test_admin_list_cursors_past_64_bits_are_refused(admin, funded_account, path):
    _no_500(admin.get(path.replace("{aid}", funded_account)), 400)


def test_the_portal_ledger_cursor_past_64_bits_is_refused(holder):
    b, _ = holder
    _no_500(b.get("/portal/ledger?before=99999999999999999999"), 400)


# -- the smaller findings -------------------------------------------------------------------


@pytest.mark.parametrize("password", ["", "aaaaaaaaaaaa", "grace@example.com"])
def test_sign_up_refuses_empty_or_weak_passwords(client, db, password):
    b = Browser(client)
    resp = b.post("/portal/signup", {"name": "Grace", "email": "grace@example.com",
                                     "password": password, "password2": password,
                                     "adult": "yes"})
    assert resp.status_code == 422 and "password" in resp.get_data(as_text=True)
    with db.read_transaction() as s:
        assert accounts.count_accounts(s) == 0


def test_a_viewers_refused_token_request_shows_only_their_tokens(viewer, make_token,
                                                                  admin_user):
    admin_token = make_token(admin_user, "write")
    resp = viewer.post("/admin/tokens", {"scope": "bogus"}, page="/admin/operators")
    assert resp.status_code == 422
    tokens = resp.get_data(as_text=True).split("Admin API tokens")[1]
    assert admin_token[:12] not in tokens and "No tokens." in tokens


def _event(account_id, event_id="evt_same", amount=2500):
    obj = {"id": "cs_1", "object": "checkout.session", "amount_total": amount,
           "currency": "usd", "payment_status": "paid", "metadata": {"account_id": account_id}}
    return json.dumps({"id": event_id, "object": "event", "type": "checkout.session.completed",
                       "data": {"object": obj}})


def _deliver(client, payload):
    header = stripe.WebhookSignature.generate_signature_header(payload, SECRET)
    return client.post("/webhooks/payments", data=payload,
                       headers={"Stripe-Signature": header, "Content-Type": "application/json"})


def test_one_webhook_event_credits_one_account_once(client, db, uow, funded_account):
    with uow() as ctx:
        other = accounts.create_account(ctx, name="B", email="b@example.com",
                                        adult_attested=True).id
    first = _deliver(client, _event(funded_account))
    assert first.status_code == 200 and first.get_json()["credited"] is True
    second = _deliver(client, _event(other))  # same event id, another account
    assert second.status_code == 200 and second.get_json()["duplicate"] is True
    with db.read_transaction() as s:
        assert wallet.get_balance(s, other).balance == 0


def test_a_payment_for_a_deleted_account_is_refused_and_recorded(client, db, uow,
                                                                  funded_account):
    with uow() as ctx:
        accounts.delete_account(ctx, funded_account)
    with db.read_transaction() as s:
        before = wallet.get_balance(s, funded_account).balance
        entries = s.scalar(select(func.count()).select_from(LedgerEntry))
    resp = _deliver(client, _event(funded_account, event_id="evt_late"))
    assert resp.status_code == 200
    assert resp.get_json() == {"received": True, "credited": False, "duplicate": False,
                               "refused": "account_deleted"}
    from control.core.models import PaymentEvent

    with db.read_transaction() as s:
        assert wallet.get_balance(s, funded_account).balance == before
        assert s.scalar(select(func.count()).select_from(LedgerEntry)) == entries
        row = s.get(PaymentEvent, "evt_late")
        assert row.outcome == "refused" and row.amount > 0
        assert s.scalar(select(AuditEvent.action).order_by(AuditEvent.seq.desc()).limit(1)) \
            == "wallet.payment_refused"
    # A replay stays refused and changes nothing.
    assert _deliver(client, _event(funded_account, event_id="evt_late")).get_json()[
        "duplicate"] is True


def test_csrf_token_is_still_required_on_login(client):
    token_page = client.get("/admin/login").get_data(as_text=True)
    assert csrf_from(token_page)
    assert client.post("/admin/login", data={"username": "root"}).status_code == 400

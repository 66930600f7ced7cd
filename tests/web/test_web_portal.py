"""The account holders' portal: sign-up with attestation, keys, usage, rights."""

from __future__ import annotations

import json
import re

from sqlalchemy import func, select
from web_helpers import HOLDER_PW, Browser, sign_in, sqlite_only

from control.core import keys, wallet
from control.core.models import Account, ApiKey, AuditEvent, WebSession

SIGNUP = {"name": "Katherine J", "email": "kj@example.com", "password": "long enough pw",
          "password2": "long enough pw", "adult": "yes"}


def _count(db, model) -> int:
    with db.read_transaction() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_signup_requires_attestation_and_valid_input(browser, db):
    for changes, field in (({"adult": ""}, "18 years"), ({"password2": "different!!"}, "differ"),
                           ({"password": "short", "password2": "short"}, "at least 10"),
                           ({"email": "nope"}, "malformed")):
        resp = browser.post("/portal/signup", {**SIGNUP, **changes})
        assert resp.status_code == 422, changes
        assert field in resp.get_data(as_text=True) or "older" in resp.get_data(as_text=True)
    assert _count(db, Account) == 0 and _count(db, AuditEvent) == 0


def test_signup_signs_in_and_stores_only_a_hash(browser, db):
    resp = browser.post("/portal/signup", {**SIGNUP, "opt_out": "yes"})
    assert resp.status_code == 302
    assert browser.cookie().startswith("s.")
    with db.read_transaction() as s:
        a = s.scalar(select(Account))
        assert a.adult_attested_at is not None and a.opt_out_non_essential is True
        assert a.password_hash.startswith("$2b$") and SIGNUP["password"] not in a.password_hash
    html = browser.get("/portal/").get_data(as_text=True)
    assert "Hello, Katherine J" in html and "$2b$" not in html
    # duplicate email
    other = Browser(browser.client.application.test_client())
    assert other.post("/portal/signup", SIGNUP).status_code == 409


@sqlite_only
def test_portal_pages_require_sign_in(app, client):
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/portal") or rule.rule in (
                "/portal/", "/portal/login", "/portal/signup", "/portal/logout",
                # for people who can't sign in: forgot password, the e-mailed link's page
                "/portal/forgot", "/portal/password/<path:token>"):
            continue
        if "GET" in rule.methods:
            url = re.sub(r"<[^>]+>", "x", rule.rule)
            resp = client.get(url)
            assert resp.status_code == 302 and "/portal/login" in resp.headers["Location"], url


def test_login_refusals(browser, holder, db):
    resp = browser.post("/portal/login", {"email": "grace@example.com", "password": "nope nope"})
    assert resp.status_code == 401
    resp = browser.post("/portal/login", {"email": "nobody@example.com", "password": HOLDER_PW})
    assert resp.status_code == 401


def test_admin_and_holder_sessions_do_not_cross(app, admin, holder):
    b, _ = holder
    assert b.get("/admin/").status_code == 302
    assert admin.get("/portal/keys").status_code == 302


def test_keys_create_and_revoke_own_only(holder, db, uow, funded_account):
    b, account_id = holder
    resp = b.post("/portal/keys", {"name": "laptop"})
    assert resp.status_code == 200
    raw = re.search(r'<code id="new-key">([^<]+)</code>', resp.get_data(as_text=True)).group(1)
    assert raw not in b.get("/portal/keys").get_data(as_text=True)
    key_id = keys.parse(raw).key_id
    with uow() as ctx:
        other_key, _ = keys.create_key(ctx, funded_account)
        other_id = other_key.key_id
    assert b.post(f"/portal/keys/{other_id}/revoke", {}, page="/portal/keys").status_code == 404
    assert b.post(f"/portal/keys/{key_id}/revoke", {}, page="/portal/keys").status_code == 302
    with db.read_transaction() as s:
        assert s.get(ApiKey, key_id).status == "revoked"
        assert s.get(ApiKey, other_id).status == "active"
        actors = list(s.scalars(select(AuditEvent.actor).where(AuditEvent.target_id == key_id)))
    assert actors == [f"account:{account_id}"] * 2


def test_usage_and_ledger(holder, uow):
    b, account_id = holder
    with uow() as ctx:
        wallet.topup(ctx, account_id, 3_000_000, idempotency_key="t1")
    home = b.get("/portal/").get_data(as_text=True)
    assert "3.000000 USD" in home and "<svg" in home
    assert "topup" in b.get("/portal/ledger").get_data(as_text=True)


def test_profile_correction_and_preferences(holder, db):
    b, account_id = holder
    resp = b.post("/portal/profile", {"name": "Grace B. Hopper", "email": "gbh@example.com",
                                      "company": "Navy"})
    assert resp.status_code == 302
    assert b.post("/portal/profile", {"name": "", "email": "x@example.com"}).status_code == 422
    assert b.post("/portal/preferences", {"opt_out": "yes"}, page="/portal/profile"
                  ).status_code == 302
    with db.read_transaction() as s:
        a = s.get(Account, account_id)
        assert (a.name, a.email, a.company) == ("Grace B. Hopper", "gbh@example.com", "Navy")
        assert a.opt_out_non_essential is True
        actions = list(s.scalars(select(AuditEvent.action)
                                 .where(AuditEvent.target_id == account_id)))
    assert "account.updated" in actions and "account.preferences_updated" in actions


def test_export_download(holder, db):
    b, account_id = holder
    page = b.get("/portal/export").get_data(as_text=True)
    assert "Download my data" in page
    resp = b.post("/portal/export", {}, page="/portal/export")
    assert resp.status_code == 200
    assert "attachment" in resp.headers["Content-Disposition"]
    doc = json.loads(resp.get_data(as_text=True))
    assert account_id in json.dumps(doc) and "$2b$" not in json.dumps(doc)
    with db.read_transaction() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)
                        .where(AuditEvent.action == "account.exported")) >= 1


def test_delete_account_ends_access(holder, db, uow):
    b, account_id = holder
    with uow() as ctx:
        keys.create_key(ctx, account_id)
    assert b.post("/portal/delete", {"password": HOLDER_PW}).status_code == 422
    assert b.post("/portal/delete", {"password": "wrong one!", "confirm": "yes"}
                  ).status_code == 422
    with db.read_transaction() as s:
        assert s.get(Account, account_id).status == "active"
    resp = b.post("/portal/delete", {"password": HOLDER_PW, "confirm": "yes"})
    assert resp.status_code == 200 and "deleted" in resp.get_data(as_text=True)
    assert b.get("/portal/keys").status_code == 302
    with db.read_transaction() as s:
        assert s.get(Account, account_id).status == "deleted"
        assert set(s.scalars(select(ApiKey.status))) == {"revoked"}
        assert s.scalar(select(func.count()).select_from(WebSession)
                        .where(WebSession.revoked_at.is_(None))) == 0
    # and cannot sign in again
    assert b.post("/portal/login", {"email": "grace@example.com", "password": HOLDER_PW}
                  ).status_code == 401


def test_disabling_an_account_signs_the_holder_out(holder, admin):
    b, account_id = holder
    assert b.get("/portal/keys").status_code == 200
    page = f"/admin/accounts/{account_id}"
    assert admin.post(f"{page}/status", {"status": "disabled"}, page=page).status_code == 302
    assert b.get("/portal/keys").status_code == 302


def test_admin_sign_in_does_not_accept_account_credentials(browser, holder):
    assert sign_in(browser, "grace@example.com", HOLDER_PW).status_code == 401


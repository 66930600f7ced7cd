"""The admin web UI: guards on every route, and each page's service call, audited."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from web_helpers import ADMIN_PW, sqlite_only

from control.core import accounts, keys, records, wallet
from control.core.base import utcnow
from control.core.models import Account, ApiKey, AuditEvent, LedgerEntry


def _rules(app, prefix: str, method: str) -> list[str]:
    out = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(prefix) and method in rule.methods:
            url = re.sub(r"<[^>]+>", "x" * 8, rule.rule)
            if url not in ("/admin/login", "/admin/logout"):
                out.append(url)
    return sorted(out)


def _events(db, action: str | None = None) -> list[AuditEvent]:
    with db.read_transaction() as s:
        q = select(AuditEvent).order_by(AuditEvent.seq)
        if action:
            q = q.where(AuditEvent.action == action)
        rows = list(s.scalars(q))
        s.expunge_all()
        return rows


def _count(db, model) -> int:
    with db.read_transaction() as s:
        return s.scalar(select(func.count()).select_from(model))


@sqlite_only
def test_every_admin_page_requires_sign_in(app, client):
    urls = _rules(app, "/admin", "GET")
    assert len(urls) >= 10
    for url in urls:
        resp = client.get(url)
        assert resp.status_code == 302, url
        assert resp.headers["Location"].startswith("/admin/login"), url


@sqlite_only
def test_every_admin_form_requires_sign_in(app, browser, db):
    token = browser.token("/admin/login")
    for url in _rules(app, "/admin", "POST"):
        resp = browser.client.post(url, data={"csrf_token": token})
        assert resp.status_code == 302, url
    assert _count(db, AuditEvent) == 0


def test_viewer_reads_but_every_admin_form_is_403(app, viewer, db, funded_account):
    assert viewer.get("/admin/").status_code == 200
    assert viewer.get(f"/admin/accounts/{funded_account}").status_code == 200
    assert viewer.get("/admin/accounts/new").status_code == 403
    before = _count(db, AuditEvent)
    token = viewer.token("/admin/")
    # Their own tokens and two-factor settings (the sign-in code step needs no role).
    allowed_for_viewers = {"/admin/tokens", "/admin/tokens/xxxxxxxx/revoke", "/admin/login/code",
                           "/admin/security/totp/begin", "/admin/security/totp/confirm",
                           "/admin/security/totp/cancel", "/admin/security/totp/disable",
                           "/admin/security/password"}  # everyone changes their own
    for url in _rules(app, "/admin", "POST"):
        if url in allowed_for_viewers:
            continue
        url = url.replace("xxxxxxxx", funded_account)
        resp = viewer.client.post(url, data={"csrf_token": token, "amount": "5",
                                             "status": "disabled", "confirm": "yes"})
        assert resp.status_code == 403, url
    assert _count(db, AuditEvent) == before
    with db.read_transaction() as s:
        assert wallet.get_balance(s, funded_account).balance == 10_000_000


def test_create_account_requires_attestation_and_writes_nothing(admin, db):
    before = _count(db, AuditEvent)
    resp = admin.post("/admin/accounts/new", {"name": "Bob", "email": "bob@example.com"})
    assert resp.status_code == 422
    assert "18 or older" in resp.get_data(as_text=True)
    resp = admin.post("/admin/accounts/new", {"name": "Bob", "email": "not-an-email",
                                              "adult": "yes"})
    assert resp.status_code == 422
    assert "email address is malformed" in resp.get_data(as_text=True)
    assert _count(db, Account) == 0
    assert _count(db, AuditEvent) == before


def test_account_lifecycle_from_the_ui(admin, db, admin_user):
    resp = admin.post("/admin/accounts/new", {"name": "Bob Example", "email": "bob@example.com",
                                              "company": "Acme", "adult": "yes"})
    assert resp.status_code == 302
    account_id = resp.headers["Location"].rsplit("/", 1)[1]
    page = admin.get(f"/admin/accounts/{account_id}").get_data(as_text=True)
    assert "Bob Example" in page and "Account created." in page
    # duplicate email -> 409
    resp = admin.post("/admin/accounts/new", {"name": "B2", "email": "bob@example.com",
                                              "adult": "yes"})
    assert resp.status_code == 409
    # search and list
    assert "Bob Example" in admin.get("/admin/accounts?q=acme").get_data(as_text=True)
    assert "Bob Example" not in admin.get("/admin/accounts?q=zzz").get_data(as_text=True)
    # edit
    url = f"/admin/accounts/{account_id}/edit"
    resp = admin.post(url, {"name": "Robert Example", "email": "bob@example.com",
                            "company": ""})
    assert resp.status_code == 302
    resp = admin.post(url, {"name": "", "email": "bob@example.com"})
    assert resp.status_code == 422
    # disable and enable
    page = f"/admin/accounts/{account_id}"
    assert admin.post(f"{page}/status", {"status": "disabled"}, page=page).status_code == 302
    assert admin.post(f"{page}/status", {"status": "bogus"}, page=page).status_code == 422
    assert admin.post(f"{page}/status", {"status": "active"}, page=page).status_code == 302
    # delete needs the confirmation box
    assert admin.post(f"{page}/delete", {}, page=page).status_code == 422
    assert admin.post(f"{page}/delete", {"confirm": "yes"}, page=page).status_code == 302
    with db.read_transaction() as s:
        assert s.get(Account, account_id).status == "deleted"
    actions = [e.action for e in _events(db) if e.target_id == account_id]
    assert actions == ["account.created", "account.updated", "account.disabled",
                       "account.enabled", "account.deleted"]
    assert all(e.actor == f"user:{admin_user}" for e in _events(db)
               if e.target_id == account_id)


def test_key_secret_is_shown_once_then_revoke_and_rotate(admin, db, funded_account):
    page = f"/admin/accounts/{funded_account}"
    resp = admin.post(f"{page}/keys", {"name": "ci", "models": ["sim-gpt"], "rpm_limit": "60"},
                      page=page)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    raw = re.search(r'<code id="new-key">([^<]+)</code>', html).group(1)
    assert keys.parse(raw)
    again = admin.get(page).get_data(as_text=True)
    assert raw not in again and keys.parse(raw).secret not in again
    with db.read_transaction() as s:
        key = s.scalar(select(ApiKey))
        assert key.allowed_models == ["sim-gpt"] and key.rpm_limit == 60
        assert key.secret_hash not in again
        key_id = key.key_id
    # bad input
    resp = admin.post(f"{page}/keys", {"models": ["no-such-model"]}, page=page)
    assert resp.status_code == 422 and "unknown model" in resp.get_data(as_text=True)
    resp = admin.post(f"{page}/keys", {"rpm_limit": "many"}, page=page)
    assert resp.status_code == 422
    # rotate shows the new secret once; the old key is revoked
    resp = admin.post(f"/admin/keys/{key_id}/rotate", {}, page=page)
    assert resp.status_code == 200
    new_raw = re.search(r'<code id="new-key">([^<]+)</code>', resp.get_data(as_text=True))
    assert new_raw and new_raw.group(1) != raw
    new_id = keys.parse(new_raw.group(1)).key_id
    assert admin.post(f"/admin/keys/{new_id}/revoke", {}, page=page).status_code == 302
    assert admin.post("/admin/keys/nope/revoke", {}, page=page).status_code == 404
    with db.read_transaction() as s:
        statuses = {k.key_id: k.status for k in s.scalars(select(ApiKey))}
    assert set(statuses.values()) == {"revoked"}
    assert [e.action for e in _events(db) if e.action.startswith("key.")] == [
        "key.created", "key.created", "key.rotated", "key.revoked"]


def test_topup_is_idempotent_and_adjust_needs_a_reason(admin, db, funded_account):
    page = f"/admin/accounts/{funded_account}"
    html = admin.get(page).get_data(as_text=True)
    idem = re.search(r'name="idempotency_key" value="([^"]+)"', html).group(1)
    data = {"amount": "2.50", "idempotency_key": idem}
    assert admin.post(f"{page}/topup", data, page=page).status_code == 302
    assert admin.post(f"{page}/topup", data, page=page).status_code == 302  # double submit
    with db.read_transaction() as s:
        assert wallet.get_balance(s, funded_account).balance == 12_500_000
    for bad in ("0", "-1", "abc", "1.0000001"):
        resp = admin.post(f"{page}/topup", {"amount": bad, "idempotency_key": bad}, page=page)
        assert resp.status_code == 422, bad
    resp = admin.post(f"{page}/adjust", {"amount": "-1", "reason": ""}, page=page)
    assert resp.status_code == 422 and "needs a reason" in resp.get_data(as_text=True)
    resp = admin.post(f"{page}/adjust", {"amount": "-100", "reason": "too much"}, page=page)
    assert resp.status_code == 409
    resp = admin.post(f"{page}/adjust", {"amount": "-0.5", "reason": "goodwill fix"}, page=page)
    assert resp.status_code == 302
    with db.read_transaction() as s:
        assert wallet.get_balance(s, funded_account).balance == 12_000_000
        assert s.scalar(select(func.count()).select_from(LedgerEntry)) == 3
    assert "goodwill fix" in admin.get(f"{page}/ledger").get_data(as_text=True)
    assert [e.action for e in _events(db) if e.action.startswith("wallet.")] == [
        "wallet.topped_up", "wallet.topped_up", "wallet.adjusted"]


def test_dashboard_shows_recorded_requests(admin, db, funded_account):
    now = utcnow()
    rows = [{"time": (now - timedelta(minutes=i)).isoformat(), "request_id": f"req-{i}",
             "account_id": funded_account, "key_id": None, "endpoint": "chat.completions",
             "method": "POST", "provider": "simulator", "model": "sim-gpt", "stream": False,
             "status": 200 if i % 4 else 500, "error_type": None if i % 4 else "upstream",
             "input_tokens": 10, "output_tokens": 20, "cached_tokens": 0, "estimated": False,
             "cost": 1234, "latency_ms": 100 + i, "ttfb_ms": None, "upstream_ms": None,
             "request_bytes": 100, "response_bytes": 200, "client_ip": None,
             "user_agent": None} for i in range(8)]
    with db.transaction() as s:
        records.insert_records(s, rows)
    for window in ("24h", "7d", "30d", "90d", "bogus"):
        resp = admin.get(f"/admin/?window={window}")
        assert resp.status_code == 200
        html = resp.get_data(as_text=True)
        assert "<svg" in html and "sim-gpt" in html
    html = admin.get("/admin/").get_data(as_text=True)
    assert ">8</b><span>requests" in html and "25.0%" in html
    assert "chat.completions" in admin.get("/admin/records").get_data(as_text=True)


def test_audit_log_filters_and_verifies(admin, db, funded_account):
    html = admin.get(f"/admin/audit?target_id={funded_account}").get_data(as_text=True)
    assert "account.created" in html and "wallet.topped_up" in html
    html = admin.get("/admin/audit?action=wallet.topped_up").get_data(as_text=True)
    assert "account.created</td>" not in html
    resp = admin.get("/admin/audit/verify")
    assert resp.status_code == 302
    assert "intact" in admin.get("/admin/audit").get_data(as_text=True)


def test_pages_never_show_hashes_or_secrets(admin, db, uow, funded_account):
    with uow() as ctx:
        accounts.update_account(ctx, funded_account, name="Ada L")
        _, raw = keys.create_key(ctx, funded_account)
    with db.read_transaction() as s:
        hashes = [k.secret_hash for k in s.scalars(select(ApiKey))]
    for url in ("/admin/", f"/admin/accounts/{funded_account}", "/admin/accounts",
                "/admin/audit", "/admin/operators", "/admin/records"):
        html = admin.get(url).get_data(as_text=True)
        assert raw not in html and keys.parse(raw).secret not in html
        assert not any(h in html for h in hashes)
        assert "$2b$" not in html and ADMIN_PW not in html


def test_operator_tokens_page(admin, viewer, db):
    resp = admin.post("/admin/tokens", {"name": "ci", "scope": "write"}, page="/admin/operators")
    assert resp.status_code == 200
    raw = re.search(r'<code id="new-token">([^<]+)</code>', resp.get_data(as_text=True)).group(1)
    assert raw.startswith("hga_")
    assert raw not in admin.get("/admin/operators").get_data(as_text=True)
    resp = viewer.post("/admin/tokens", {"scope": "write"}, page="/admin/operators")
    assert resp.status_code == 422
    key_id = keys.parse(raw, "hga").key_id
    assert viewer.post(f"/admin/tokens/{key_id}/revoke", {},
                       page="/admin/operators").status_code == 403
    assert admin.post(f"/admin/tokens/{key_id}/revoke", {},
                      page="/admin/operators").status_code == 302
    assert [e.action for e in _events(db) if e.action.startswith("admin_token")] == [
        "admin_token.created", "admin_token.revoked"]


@pytest.mark.parametrize("url", ["/admin/retention", "/policy"])
def test_retention_and_policy_pages(admin, url, config):
    resp = admin.get(url)
    assert resp.status_code == 200
    assert str(config.retention["request_records_days"]) in resp.get_data(as_text=True)


def test_unknown_account_is_404(admin):
    assert admin.get("/admin/accounts/doesnotexist").status_code == 404
    assert admin.get("/admin/accounts/doesnotexist/ledger").status_code == 404

"""Pages and API calls backed by the privacy-lifecycle services (export, erasure,
retention, policy)."""

from __future__ import annotations

import json

from sqlalchemy import select

from control.core.models import Account, AuditEvent


def _actions(db, target_id: str | None = None) -> list[str]:
    with db.read_transaction() as s:
        q = select(AuditEvent.action).order_by(AuditEvent.seq)
        if target_id:
            q = q.where(AuditEvent.target_id == target_id)
        return list(s.scalars(q))


def test_api_export_streams_the_document_and_is_audited(api, db, funded_account):
    resp = api("GET", f"/accounts/{funded_account}/export")
    assert resp.status_code == 200
    assert "attachment" in resp.headers["Content-Disposition"]
    doc = json.loads(resp.get_data(as_text=True))
    text = json.dumps(doc)
    assert "ada@example.com" in text and "$2b$" not in text
    assert _actions(db, funded_account)[-1] == "account.exported"
    assert api("GET", "/accounts/nope/export").status_code == 404


def test_api_erase_needs_confirmation(api, db, funded_account):
    resp = api("POST", f"/accounts/{funded_account}/erase", json={"confirm": False})
    assert resp.status_code == 422 and "confirm" in resp.get_json()["error"]["fields"]
    with db.read_transaction() as s:
        assert s.get(Account, funded_account).status == "active"
    resp = api("POST", f"/accounts/{funded_account}/erase", json={"confirm": True})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "erased" and body["email"] is None
    assert body["name"] != "Ada Lovelace"
    assert "account.erased" in _actions(db, funded_account)


def test_admin_erase_from_the_account_page(admin, db, funded_account):
    page = f"/admin/accounts/{funded_account}"
    assert admin.post(f"{page}/delete", {"confirm": "yes"}, page=page).status_code == 302
    assert "Erase now" in admin.get(page).get_data(as_text=True)
    assert admin.post(f"{page}/erase", {}, page=page).status_code == 422
    assert admin.post(f"{page}/erase", {"confirm": "yes"}, page=page).status_code == 302
    with db.read_transaction() as s:
        a = s.get(Account, funded_account)
        assert a.status == "erased" and a.email is None


def test_retention_status_and_runs(admin, viewer, api, read_token, db):
    html = admin.get("/admin/retention").get_data(as_text=True)
    assert "Request records past their window" in html and "Run retention now" in html
    assert "Run retention now" not in viewer.get("/admin/retention").get_data(as_text=True)
    assert viewer.post("/admin/retention/run", {"dry_run": "yes"},
                       page="/admin/retention").status_code == 403
    resp = admin.post("/admin/retention/run", {"dry_run": "yes"}, page="/admin/retention")
    assert resp.status_code == 302
    assert "would remove" in admin.get("/admin/retention").get_data(as_text=True)
    status = api("GET", "/retention", token=read_token).get_json()
    assert status["windows"]["request_records_days"] == 90
    assert "request_records_due" in status["status"]
    assert api("POST", "/retention/run", token=read_token, json={}).status_code == 403
    run = api("POST", "/retention/run", json={"dry_run": False})
    assert run.status_code == 200 and run.get_json()["result"]["dry_run"] is False
    with db.read_transaction() as s:
        actors = list(s.scalars(select(AuditEvent.actor)
                                .where(AuditEvent.action == "retention.purged")))
    assert actors and actors[-1].startswith("api:")


def test_policy_page_is_rendered_from_the_configuration(client, config):
    html = client.get("/policy").get_data(as_text=True)
    assert "Privacy" in html
    assert f"{config.retention['request_records_days']} days" in html


def test_holders_are_notified_of_key_and_account_changes(api, admin, holder, db):
    from control.core.models import Notification

    b, account_id = holder
    resp = b.post("/portal/keys", {"name": "k"})
    assert resp.status_code == 200
    key_id = api("GET", f"/accounts/{account_id}/keys").get_json()["items"][0]["key_id"]
    assert api("POST", f"/keys/{key_id}/revoke", json={}).status_code == 200
    assert api("POST", f"/keys/{key_id}/revoke", json={}).status_code == 200  # no-op
    assert api("DELETE", f"/accounts/{account_id}").status_code == 200
    assert api("DELETE", f"/accounts/{account_id}").status_code == 200  # no-op
    with db.read_transaction() as s:
        notes = [(n.kind, n.params) for n in s.scalars(
            select(Notification).where(Notification.account_id == account_id)
            .order_by(Notification.created_at))]
    assert [k for k, _ in notes] == ["key_created", "key_revoked", "account_deleted"]
    assert notes[0][1]["key_id"] == key_id

"""The JSON admin API: tokens and scopes, errors with fields, pagination, idempotency."""

from __future__ import annotations

from sqlalchemy import func, select
from web_helpers import sqlite_only

from control.core import accounts, admin_tokens, keys
from control.core.models import Account, AuditEvent, LedgerEntry


def _count(db, model) -> int:
    with db.read_transaction() as s:
        return s.scalar(select(func.count()).select_from(model))


def _error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    err = resp.get_json()["error"]
    assert set(err) == {"code", "message", "fields"}
    if code:
        assert err["code"] == code
    return err


def test_tokens_are_required_and_checked(client, api, write_token, uow, admin_user, db):
    _error(client.get("/api/v1/me"), 401, "unauthorized")
    _error(client.get("/api/v1/me", headers={"Authorization": "Basic abc"}), 401)
    _error(api("GET", "/me", token="hga_x"), 401, "invalid_token")
    # right format, wrong secret
    parsed = keys.parse(write_token, "hga")
    forged, _ = keys.generate("hga")
    forged = forged.replace(keys.parse(forged, "hga").key_id, parsed.key_id)
    _error(api("GET", "/me", token=forged), 401)
    # an account key is not an admin token
    _error(api("GET", "/me", token=keys.generate("hg")[0]), 401)
    me = api("GET", "/me").get_json()
    assert me["username"] == "root" and me["scope"] == "write"
    # revocation is immediate, even with the verification cached
    with uow() as ctx:
        admin_tokens.revoke_token(ctx, parsed.key_id)
    _error(api("GET", "/me"), 401)


def test_read_scope_cannot_write_and_nothing_is_written(api, read_token, db):
    assert api("GET", "/accounts", token=read_token).status_code == 200
    before = _count(db, AuditEvent)
    resp = api("POST", "/accounts", token=read_token,
               json={"name": "N", "email": "n@example.com", "adult_attested": True})
    _error(resp, 403, "forbidden")
    assert _count(db, Account) == 0 and _count(db, AuditEvent) == before


def test_viewer_write_token_is_refused_at_creation(uow, viewer_user):
    import pytest

    from control.core.errors import ValidationError

    with pytest.raises(ValidationError), uow() as ctx:
        admin_tokens.create_token(ctx, viewer_user, scope="write")


def test_account_crud_with_field_errors(api, db, write_token):
    err = _error(api("POST", "/accounts", json={"name": "N", "email": "n@example.com"}), 422)
    assert err["fields"] == {"adult_attested": "required"}
    err = _error(api("POST", "/accounts", json={"name": 3, "email": "x", "adult_attested": True,
                                                "extra": 1}), 422)
    assert err["fields"] == {"name": "must be a string", "extra": "unknown field"}
    err = _error(api("POST", "/accounts", json={"name": "N", "email": "bad",
                                                "adult_attested": True}), 422)
    assert err["fields"] == {"email": "email address is malformed"}
    err = _error(api("POST", "/accounts", json={"name": "N", "email": "n@example.com",
                                                "adult_attested": False}), 422)
    assert "adult_attested" in err["fields"]
    _error(api("POST", "/accounts", data="not json", content_type="application/json"), 400)
    _error(api("POST", "/accounts", json=[1, 2]), 400)
    assert _count(db, Account) == 0
    resp = api("POST", "/accounts", json={"name": "Nina", "email": "nina@example.com",
                                          "adult_attested": True})
    assert resp.status_code == 201
    account = resp.get_json()
    aid = account["id"]
    assert "password_hash" not in account
    _error(api("POST", "/accounts", json={"name": "N2", "email": "nina@example.com",
                                          "adult_attested": True}), 409, "conflict")
    assert api("GET", f"/accounts/{aid}").get_json()["name"] == "Nina"
    _error(api("GET", "/accounts/nope"), 404, "not_found")
    _error(api("GET", "/accounts/" + "x" * 40), 404)
    assert api("PATCH", f"/accounts/{aid}", json={"company": "Co"}).get_json()["company"] == "Co"
    _error(api("PATCH", f"/accounts/{aid}", json={"status": "erased"}), 422)
    assert api("POST", f"/accounts/{aid}/status",
               json={"status": "disabled"}).get_json()["status"] == "disabled"
    _error(api("POST", f"/accounts/{aid}/status", json={"status": "gone"}), 422)
    assert api("DELETE", f"/accounts/{aid}").get_json()["status"] == "deleted"
    with db.read_transaction() as s:
        actors = set(s.scalars(select(AuditEvent.actor).where(AuditEvent.target_id == aid)))
    assert actors == {f"api:{keys.parse(write_token, 'hga').key_id}"}


def test_account_list_pagination_and_search(api, uow):
    with uow() as ctx:
        for i in range(7):
            accounts.create_account(ctx, name=f"User {i}", email=f"u{i}@example.com",
                                    adult_attested=True)
    page = api("GET", "/accounts?limit=3").get_json()
    assert len(page["items"]) == 3 and page["next_offset"] == 3
    seen = [a["id"] for a in page["items"]]
    while page["next_offset"] is not None:
        page = api("GET", f"/accounts?limit=3&offset={page['next_offset']}").get_json()
        seen += [a["id"] for a in page["items"]]
    assert len(set(seen)) == 7
    assert [a["email"] for a in api("GET", "/accounts?q=u3@").get_json()["items"]] == [
        "u3@example.com"]
    for bad in ("limit=0", "limit=201", "limit=x", "offset=-1", "status=weird"):
        _error(api("GET", f"/accounts?{bad}"), 400)


def test_keys_secret_only_at_creation(api, funded_account, db):
    resp = api("POST", f"/accounts/{funded_account}/keys",
               json={"name": "k", "allowed_models": ["sim-gpt"], "rpm_limit": 10})
    assert resp.status_code == 201
    created = resp.get_json()
    raw = created.pop("key")
    assert keys.parse(raw).key_id == created["key_id"]
    listed = api("GET", f"/accounts/{funded_account}/keys").get_data(as_text=True)
    one = api("GET", f"/keys/{created['key_id']}").get_data(as_text=True)
    for text in (listed, one):
        assert raw not in text and keys.parse(raw).secret not in text and "$2b$" not in text
    err = _error(api("POST", f"/accounts/{funded_account}/keys",
                     json={"allowed_models": ["nope"]}), 422)
    assert err["fields"] == {"models": "unknown model 'nope' in scope"}
    _error(api("POST", f"/accounts/{funded_account}/keys", json={"rpm_limit": True}), 422)
    _error(api("POST", f"/accounts/{funded_account}/keys", json={"expires_at": "soon"}), 422)
    rotated = api("POST", f"/keys/{created['key_id']}/rotate", json={"grace_seconds": 60})
    assert rotated.status_code == 201 and rotated.get_json()["key"] != raw
    revoked = api("POST", f"/keys/{rotated.get_json()['key_id']}/revoke", json={"reason": "x"})
    assert revoked.get_json()["status"] == "revoked"
    _error(api("POST", "/keys/unknown/revoke"), 404)


def test_money_needs_idempotency_key_and_credits_once(api, funded_account, db):
    url = f"/accounts/{funded_account}/wallet/topup"
    before = _count(db, LedgerEntry)
    err = _error(api("POST", url, json={"amount": 5}), 400, "idempotency_key_required")
    assert err["fields"] == {"Idempotency-Key": "required"}
    _error(api("POST", f"/accounts/{funded_account}/wallet/adjust",
               json={"amount": -5, "reason": "x"}), 400)
    assert _count(db, LedgerEntry) == before
    h = {"Idempotency-Key": "order-1"}
    first = api("POST", url, json={"amount": 5_000_000}, headers=h)
    assert first.status_code == 201 and first.get_json()["created"] is True
    again = api("POST", url, json={"amount": 5_000_000}, headers=h)
    assert again.status_code == 200 and again.get_json()["created"] is False
    assert again.get_json()["wallet"]["balance"] == 15_000_000
    _error(api("POST", url, json={"amount": 7}, headers=h), 409, "idempotency_conflict")
    _error(api("POST", url, json={"amount": 0}, headers={"Idempotency-Key": "z"}), 422)
    _error(api("POST", url, json={"amount": 1.5}, headers={"Idempotency-Key": "z"}), 422)
    _error(api("POST", url, json={"amount": "5"}, headers={"Idempotency-Key": "z"}), 422)
    adj = f"/accounts/{funded_account}/wallet/adjust"
    err = _error(api("POST", adj, json={"amount": -1}, headers={"Idempotency-Key": "a"}), 422)
    assert err["fields"] == {"reason": "required"}
    _error(api("POST", adj, json={"amount": -10**9, "reason": "r"},
               headers={"Idempotency-Key": "a"}), 409, "insufficient_funds")
    ok = api("POST", adj, json={"amount": -1_000_000, "reason": "refund fee"},
             headers={"Idempotency-Key": "a2"})
    assert ok.status_code == 201
    assert api("GET", f"/accounts/{funded_account}/wallet").get_json()["balance"] == 14_000_000
    page = api("GET", f"/accounts/{funded_account}/ledger?limit=2").get_json()
    assert len(page["items"]) == 2 and page["next_before"]
    rest = api("GET", f"/accounts/{funded_account}/ledger?limit=2&before={page['next_before']}")
    assert len(rest.get_json()["items"]) == 1


@sqlite_only
def test_audit_stats_records(api, funded_account):
    page = api("GET", "/audit/events?limit=1").get_json()
    assert len(page["items"]) == 1 and page["next_before"]
    assert api("GET", "/audit/events?action=account.created").get_json()["items"][0][
        "target_id"] == funded_account
    assert api("GET", "/audit/verify").get_json()["ok"] is True
    stats = api("GET", "/stats?window=7d").get_json()
    assert stats["window"] == "7d" and len(stats["series"]) == 28
    _error(api("GET", "/stats?window=1y"), 422)
    assert api("GET", "/records").get_json() == {"items": [], "next_before": None}


def test_unknown_api_route_is_json_404(api):
    _error(api("GET", "/nothing-here"), 404)
    _error(api("PUT", "/accounts"), 405)

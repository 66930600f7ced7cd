"""The JSON admin API at /api/v1, authenticated by admin API tokens (``Bearer hga_…``).

Errors are ``{"error": {"code", "message", "fields"}}``. Money is integer minor units; every
call that moves money requires an ``Idempotency-Key`` header. Lists paginate with
``limit`` and ``offset`` (accounts) or a keyset cursor (``before``) for append-only tables.
The OpenAPI document is ``schemas/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from control.core import (
    accounts,
    audit,
    erasure,
    export,
    keys,
    retention,
    stats,
    validation,
    wallet,
)
from control.core.admin_tokens import TokenPrincipal
from control.core.audit import Actor
from control.core.config import load_schema
from control.core.errors import (
    Conflict,
    HushgateError,
    InsufficientFunds,
    InvalidKey,
    NotFound,
    ValidationError,
)
from control.core.records import record_dict
from control.web import validation as checks
from control.web.ext import hg

bp = Blueprint("api", __name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or {}


def _error(status: int, code: str, message: str,
           fields: dict[str, str] | None = None) -> tuple[Response, int]:
    resp = jsonify({"error": {"code": code, "message": message, "fields": fields or {}}})
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="hushgate"'
    return resp, status


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[Response, int]:
    return _error(exc.status, exc.code, exc.message, exc.fields)


@bp.errorhandler(HushgateError)
def _domain_error(exc: HushgateError) -> tuple[Response, int]:
    if isinstance(exc, checks.InvalidBody):
        return _error(422, exc.code, str(exc), exc.fields)
    if isinstance(exc, checks.BadRequest):
        return _error(400, exc.code, str(exc), {exc.field: str(exc)} if exc.field else {})
    if isinstance(exc, ValidationError):
        return _error(422, exc.code, str(exc), {exc.field: str(exc)} if exc.field else {})
    if isinstance(exc, NotFound):
        return _error(404, exc.code, str(exc))
    if isinstance(exc, Conflict | InsufficientFunds):
        return _error(409, exc.code, str(exc))
    if isinstance(exc, InvalidKey):
        return _error(401, exc.code, str(exc))
    return _error(400, exc.code, str(exc))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[Response, int]:
    code = (exc.name or "error").lower().replace(" ", "_")
    return _error(exc.code or 500, code, exc.description or exc.name or "error")


@bp.before_request
def _authenticate() -> None:
    if request.endpoint == "api.openapi_document":
        return  # the description of the API is public; every operation it lists is not
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise ApiError(401, "unauthorized", "an admin API token is required "
                                            "(Authorization: Bearer hga_…)")
    with hg().reader() as db:
        try:
            principal = hg().verifier.verify(db, raw.strip())
        except InvalidKey as exc:
            raise ApiError(401, "invalid_token", str(exc)) from None
    g.api = principal
    if request.method not in ("GET", "HEAD", "OPTIONS") and not principal.can_write:
        raise ApiError(403, "forbidden", "this token has read scope only")
    g.body = checks.check_api_request(request)


def _actor() -> Actor:
    principal: TokenPrincipal = g.api
    return Actor("api", principal.token_id)


# -- input helpers --------------------------------------------------------------------------


def _body() -> dict[str, Any]:
    """The JSON body, already checked against this operation's schema in openapi.json."""
    return g.body  # type: ignore[no-any-return]


# Query parameters were checked against openapi.json before the view runs (their types,
# ranges and lengths are declared there); these only read them.


def _limit(default: int = 50) -> int:
    return _int_arg("limit") or default


def _int_arg(name: str) -> int | None:
    return validation.parse_int(request.args.get(name), name, minimum=-validation.INT64_MAX)


def _str_arg(name: str, max_len: int = 100) -> str | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    return validation.check_text(value, name, max_len)


def _idempotency_key() -> str:
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        raise ApiError(400, "idempotency_key_required",
                       "calls that move money need an Idempotency-Key header",
                       {"Idempotency-Key": "required"})
    if len(key) > 200:
        raise ApiError(400, "bad_request", "Idempotency-Key is too long",
                       {"Idempotency-Key": "at most 200 characters"})
    return "api:" + key


def _datetime(value: str | None, name: str) -> datetime | None:
    return validation.parse_datetime(value, name)


def _account_id(account_id: str) -> str:
    if len(account_id) > 32:
        raise ApiError(404, "not_found", "unknown account")
    return account_id


# -- routes ---------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi_document() -> Any:
    """``schemas/openapi.json``, the document requests are validated against."""
    return load_schema("openapi.json")


@bp.get("/wallet/debts")
def debts() -> Any:
    """Accounts whose usage was charged beyond what they had, most owed first."""
    with hg().reader() as db:
        rows = wallet.accounts_in_debt(db, limit=_limit())
    return {"data": [{"account_id": d.account_id, "owed": d.owed, "balance": d.balance,
                      "held": d.held} for d in rows]}


@bp.get("/me")
def me() -> Any:
    p: TokenPrincipal = g.api
    return {"token_id": p.token_id, "user_id": p.user_id, "username": p.username,
            "scope": p.scope, "role": p.role}


@bp.get("/accounts")
def account_list() -> Any:
    limit, offset = _limit(), _int_arg("offset") or 0
    status = _str_arg("status", 16)
    if status not in (None, "active", "disabled", "deleted", "erased"):
        raise ApiError(400, "bad_request", "unknown status", {"status": "unknown status"})
    with hg().reader() as db:
        rows = accounts.list_accounts(db, search=_str_arg("q"), status=status,
                                      limit=limit + 1, offset=offset)
    return {"items": [accounts.account_dict(a) for a in rows[:limit]],
            "next_offset": offset + limit if len(rows) > limit else None}


@bp.post("/accounts")
def account_create() -> Any:
    data = _body()
    with hg().uow(_actor()) as ctx:
        account = accounts.create_account(
            ctx, name=data["name"], email=data["email"], company=data.get("company"),
            adult_attested=data["adult_attested"],
            opt_out_non_essential=bool(data.get("opt_out_non_essential")))
        out = accounts.account_dict(account)
    return out, 201


@bp.get("/accounts/<account_id>")
def account_get(account_id: str) -> Any:
    with hg().reader() as db:
        return accounts.account_dict(accounts.get_account(db, _account_id(account_id)))


@bp.patch("/accounts/<account_id>")
def account_update(account_id: str) -> Any:
    data = _body()
    with hg().uow(_actor()) as ctx:
        account = accounts.update_account(ctx, _account_id(account_id), **data)
        return accounts.account_dict(account)


@bp.post("/accounts/<account_id>/status")
def account_status(account_id: str) -> Any:
    data = _body()
    with hg().uow(_actor()) as ctx:
        account = accounts.set_account_status(ctx, _account_id(account_id), data["status"])
        return accounts.account_dict(account)


@bp.delete("/accounts/<account_id>")
def account_delete(account_id: str) -> Any:
    with hg().uow(_actor()) as ctx:
        account = accounts.delete_account(ctx, _account_id(account_id))
        return accounts.account_dict(account)


@bp.post("/accounts/<account_id>/erase")
def account_erase(account_id: str) -> Any:
    data = _body()
    with hg().uow(_actor()) as ctx:
        erasure.erase_account(ctx, _account_id(account_id), confirm=data["confirm"])
        return accounts.account_dict(accounts.get_account(ctx.session, account_id))


@bp.get("/accounts/<account_id>/export")
def account_export(account_id: str) -> Any:
    with hg().uow(_actor()) as ctx:
        aid = export.audit_export(ctx, _account_id(account_id), via="api")
    config, db = hg().config, hg().db

    def chunks() -> Iterator[str]:
        with db.read_transaction() as session:
            yield from export.iter_export(session, config, aid)

    return Response(chunks(), mimetype="application/json", headers={
        "Content-Disposition": f'attachment; filename="hushgate-export-{aid}.json"'})


@bp.get("/accounts/<account_id>/keys")
def key_list(account_id: str) -> Any:
    with hg().reader() as db:
        account = accounts.get_account(db, _account_id(account_id))
        return {"items": [keys.key_dict(k) for k in keys.list_keys(db, account.id)]}


@bp.post("/accounts/<account_id>/keys")
def key_create(account_id: str) -> Any:
    data = _body()
    models = data.get("allowed_models")
    with hg().uow(_actor()) as ctx:
        key, raw = keys.create_key(ctx, _account_id(account_id), name=data.get("name"),
                                   allowed_models=models,
                                   expires_at=_datetime(data.get("expires_at"), "expires_at"),
                                   rpm_limit=data.get("rpm_limit"),
                                   tpm_limit=data.get("tpm_limit"), budget=data.get("budget"))
        return {**keys.key_dict(key), "key": raw}, 201


@bp.get("/keys/<key_id>")
def key_get(key_id: str) -> Any:
    with hg().reader() as db:
        return keys.key_dict(keys.get_key(db, key_id))


@bp.post("/keys/<key_id>/revoke")
def key_revoke(key_id: str) -> Any:
    data = _body()
    with hg().uow(_actor()) as ctx:
        key = keys.revoke_key(ctx, key_id, reason=data.get("reason"))
        return keys.key_dict(key)


@bp.post("/keys/<key_id>/rotate")
def key_rotate(key_id: str) -> Any:
    data = _body()
    with hg().uow(_actor()) as ctx:
        key, raw = keys.rotate_key(ctx, key_id, grace_seconds=data.get("grace_seconds") or 0)
        return {**keys.key_dict(key), "key": raw}, 201


def _wallet_dict(db: Any, account_id: str) -> dict[str, Any]:
    b = wallet.get_balance(db, account_id)
    return {"account_id": account_id, "balance": b.balance, "held": b.held,
            "leased": b.leased, "available": b.available,
            "currency": hg().config.wallet["currency"],
            "minor_unit_scale": hg().config.wallet["minor_unit_scale"]}


@bp.get("/accounts/<account_id>/wallet")
def wallet_get(account_id: str) -> Any:
    with hg().reader() as db:
        return _wallet_dict(db, _account_id(account_id))


@bp.get("/accounts/<account_id>/ledger")
def ledger(account_id: str) -> Any:
    limit, before = _limit(), _int_arg("before")
    with hg().reader() as db:
        account = accounts.get_account(db, _account_id(account_id))
        rows = wallet.history(db, account.id, limit=limit, before_id=before)
    return {"items": [wallet.entry_dict(e) for e in rows],
            "next_before": rows[-1].id if len(rows) == limit else None}


def _money_result(entry: Any, created: bool, account_id: str) -> Any:
    with hg().reader() as db:
        body = {"entry": wallet.entry_dict(entry), "created": created,
                "wallet": _wallet_dict(db, account_id)}
    return body, 201 if created else 200


@bp.post("/accounts/<account_id>/wallet/topup")
def wallet_topup(account_id: str) -> Any:
    idem = _idempotency_key()
    data = _body()
    with hg().uow(_actor()) as ctx:
        entry, created = wallet.topup(ctx, _account_id(account_id), data["amount"],
                                      idempotency_key=idem, reference=data.get("reference"))
    return _money_result(entry, created, account_id)


@bp.post("/accounts/<account_id>/wallet/adjust")
def wallet_adjust(account_id: str) -> Any:
    idem = _idempotency_key()
    data = _body()
    with hg().uow(_actor()) as ctx:
        entry, created = wallet.adjust(ctx, _account_id(account_id), data["amount"],
                                       reason=data["reason"], idempotency_key=idem)
    return _money_result(entry, created, account_id)


@bp.get("/audit/events")
def audit_events() -> Any:
    limit, before = _limit(), _int_arg("before")
    with hg().reader() as db:
        rows = audit.list_events(db, limit=limit, before_seq=before, action=_str_arg("action"),
                                 target_id=_str_arg("target_id"), actor=_str_arg("actor"))
    return {"items": [audit.event_dict(e) for e in rows],
            "next_before": rows[-1].seq if len(rows) == limit else None}


@bp.get("/audit/verify")
def audit_verify() -> Any:
    r = audit.verdict(hg().db, hg().config)
    return {"ok": r.ok, "checked": r.checked, "head_seq": r.head_seq, "head_hash": r.head_hash,
            "problem": r.problem, "bad_seq": r.bad_seq}


@bp.get("/stats")
def stats_get() -> Any:
    window = _str_arg("window", 8) or stats.DEFAULT_WINDOW
    account_id = _str_arg("account_id", 32)
    with hg().reader() as db:
        return stats.dashboard(db, window=window, account_id=account_id).as_dict()


@bp.get("/records")
def records() -> Any:
    limit, before = _limit(), _int_arg("before")
    with hg().reader() as db:
        rows = stats.recent_records(db, limit=limit, before_id=before,
                                    account_id=_str_arg("account_id", 32))
        items = [{"id": r.id, **record_dict(r)} for r in rows]
    return {"items": items, "next_before": rows[-1].id if len(rows) == limit else None}


@bp.get("/retention")
def retention_get() -> Any:
    with hg().reader() as db:
        status = retention.retention_status(db, hg().config)
    return {"windows": hg().config.retention, "status": status}


@bp.post("/retention/run")
def retention_run() -> Any:
    data = _body()
    report = retention.run_retention(hg().db, hg().config, dry_run=bool(data.get("dry_run")),
                               actor=_actor())
    return {"result": report.as_dict(), "summary": str(report)}

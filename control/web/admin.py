"""The admin web UI (blueprint ``web`` under /admin): views translate forms to services."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from control.core import (
    accounts,
    admin_tokens,
    audit,
    erasure,
    keys,
    passwords,
    policy,
    sessions,
    stats,
    totp,
    wallet,
)
from control.core import retention as retention_service
from control.core.base import utcnow
from control.core.errors import HushgateError, NotFound
from control.core.models import Account, User
from control.web import charts
from control.web.auth import (
    abandon,
    admin_required,
    begin,
    client_address,
    current_sid,
    current_user,
    finish,
    pending_sign_in,
    safe_next,
    throttled_response,
    user_actor,
)
from control.web.ext import hg
from control.web.forms import (
    error_status,
    errors_of,
    field,
    new_idempotency_key,
    new_password,
    optional_datetime,
    optional_int,
    query_int,
)
from control.web.qr import qr_svg

bp = Blueprint("web", __name__, template_folder="templates")
PAGE = 50


@bp.context_processor
def _inject() -> dict[str, Any]:
    return {"user": current_user(), "area": "admin"}


# -- sign-in --------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    next_url = safe_next(request.values.get("next"), url_for("web.dashboard"))
    if request.method == "GET":
        return render_template("web/login.html", next=next_url, errors={})
    error: HushgateError | None = None
    earlier = pending_sign_in()
    with hg().db.transaction() as db:
        if earlier is not None:  # starting over ends the half-finished sign-in
            sessions.end(db, earlier[0])
        try:
            signed_in = sessions.sign_in(db, hg().config, "user", field("username", 64),
                                         request.form.get("password") or "",
                                         client=client_address(), replaces=current_sid())
        except (sessions.SignInRefused, sessions.SignInThrottled) as exc:
            error = exc
    if error is not None:
        if earlier is not None:
            abandon()
        page = render_template("web/login.html", next=next_url, errors={"_": str(error)})
        if isinstance(error, sessions.SignInThrottled):
            return throttled_response(page, error)
        return page, 401
    begin(signed_in.token, signed_in.kind, signed_in.principal_id)
    if signed_in.needs_code:
        return redirect(url_for("web.login_code", next=next_url))
    return redirect(next_url)


@bp.route("/login/code", methods=["GET", "POST"])
def login_code() -> Any:
    """The second sign-in step of an operator with two-factor sign-in."""
    next_url = safe_next(request.values.get("next"), url_for("web.dashboard"))
    pending = pending_sign_in()
    if pending is None:
        return redirect(url_for("web.login", next=next_url))
    if request.method == "GET":
        return render_template("web/login_code.html", next=next_url, errors={})
    error: HushgateError | None = None
    with hg().db.transaction() as db:
        try:
            signed_in = totp.finish_sign_in(db, hg().config, pending[0], field("code", 20))
        except HushgateError as exc:  # caught inside: the failure record is committed
            error = exc
    if isinstance(error, totp.InvalidCode):
        return render_template("web/login_code.html", next=next_url,
                               errors={"code": str(error)}), 401
    if error is not None:  # expired, throttled or unreadable: the pending session ended
        abandon()
        status = 429 if isinstance(error, sessions.SignInThrottled) else 401
        return render_template("web/login.html", next=next_url,
                               errors={"_": str(error)}), status
    begin(signed_in.token, signed_in.kind, signed_in.principal_id)
    return redirect(next_url)


@bp.post("/logout")
def logout() -> Any:
    finish()
    return redirect(url_for("web.login"))


# -- dashboard ------------------------------------------------------------------------------


def _labels(d: stats.Dashboard) -> list[str]:
    fmt = "%H:%M" if d.bucket_seconds < 86400 else "%m-%d"
    if d.window == "7d":
        fmt = "%m-%d %H:%M"
    return [t.strftime(fmt) for t, _ in d.series]


def dashboard_charts(d: stats.Dashboard) -> dict[str, Any]:
    labels = _labels(d)
    scale = hg().config.wallet["minor_unit_scale"]
    s = [a for _, a in d.series]
    return {
        "requests": charts.bar_chart("Requests", labels, [a.requests for a in s]),
        "tokens": charts.bar_chart("Tokens", labels, [a.tokens for a in s]),
        "cost": charts.bar_chart("Cost", labels, [a.cost / scale for a in s]),
        "errors": charts.line_chart("Error rate", labels,
                                    [("error %", [a.error_rate * 100 if a.requests else None
                                                  for a in s])], "%"),
        "latency": charts.line_chart("Latency", labels,
                                     [("p50", [a.percentile(0.5) for a in s]),
                                      ("p95", [a.percentile(0.95) for a in s])], "ms"),
        "cost_by_model": charts.hbar_chart("Cost per model",
                                           [(m, a.cost / scale) for m, a in d.models]),
    }


@bp.get("/")
@admin_required()
def dashboard() -> Any:
    window = request.args.get("window", stats.DEFAULT_WINDOW)
    if window not in stats.WINDOWS:
        window = stats.DEFAULT_WINDOW
    with hg().reader() as db:
        d = stats.dashboard(db, window=window)
        recent = stats.recent_records(db, limit=10)
        n_accounts = accounts.count_accounts(db, "active")
        debts = wallet.accounts_in_debt(db, limit=20)
    return render_template("web/dashboard.html", d=d, charts=dashboard_charts(d),
                           recent=recent, windows=list(stats.WINDOWS), n_accounts=n_accounts,
                           debts=debts,
                           placeholders=policy.placeholder_policy_fields(hg().config))


@bp.get("/records")
@admin_required()
def records() -> Any:
    before = query_int("before")
    account_id = request.args.get("account") or None
    with hg().reader() as db:
        rows = stats.recent_records(db, limit=PAGE, account_id=account_id, before_id=before)
    return render_template("web/records.html", rows=rows, account_id=account_id,
                           next_before=rows[-1].id if len(rows) == PAGE else None)


# -- accounts -------------------------------------------------------------------------------


@bp.get("/accounts")
@admin_required()
def account_list() -> Any:
    q = (request.args.get("q") or "").strip()[:100]
    status = request.args.get("status") or None
    if status not in (None, "active", "disabled", "deleted", "erased"):
        status = None
    page = query_int("page", 1, minimum=1, maximum=2**40) or 1
    with hg().reader() as db:
        rows = accounts.list_accounts(db, search=q or None, status=status, limit=PAGE + 1,
                                      offset=(page - 1) * PAGE)
        total = accounts.count_accounts(db, status) if not q else None
    return render_template("web/accounts.html", rows=rows[:PAGE], q=q, status=status,
                           page=page, has_next=len(rows) > PAGE, total=total)


@bp.route("/accounts/new", methods=["GET", "POST"])
@admin_required("admin")
def account_new() -> Any:
    if request.method == "GET":
        return render_template("web/account_form.html", account=None, form={}, errors={})
    form = {k: field(k, 300) for k in ("name", "email", "company")}
    try:
        with hg().uow(user_actor()) as ctx:
            account = accounts.create_account(ctx, **form,
                                              adult_attested=request.form.get("adult") == "yes")
            account_id = account.id
    except HushgateError as exc:
        return render_template("web/account_form.html", account=None, form=form,
                               errors=errors_of(exc)), error_status(exc)
    flash("Account created.")
    return redirect(url_for("web.account_detail", account_id=account_id))


def _load_account(db: Any, account_id: str) -> Account:
    try:
        return accounts.get_account(db, account_id)
    except NotFound:
        abort(404)


def _account_page(account_id: str, *, errors: dict[str, str] | None = None,
                  new_key: str | None = None, status: int = 200) -> Any:
    with hg().reader() as db:
        account = _load_account(db, account_id)
        key_rows = keys.list_keys(db, account.id)
        balance = wallet.get_balance(db, account.id)
        ledger = wallet.history(db, account.id, limit=20)
        usage = stats.dashboard(db, window="30d", account_id=account.id).total
    return render_template("web/account.html", account=account, keys=key_rows,
                           balance=balance, ledger=ledger, usage=usage, errors=errors or {},
                           new_key=new_key, idem=new_idempotency_key(),
                           models=sorted(hg().config.models)), status


@bp.get("/accounts/<account_id>")
@admin_required()
def account_detail(account_id: str) -> Any:
    return _account_page(account_id)


@bp.route("/accounts/<account_id>/edit", methods=["GET", "POST"])
@admin_required("admin")
def account_edit(account_id: str) -> Any:
    with hg().reader() as db:
        account = _load_account(db, account_id)
    if request.method == "GET":
        form = {"name": account.name, "email": account.email, "company": account.company}
        return render_template("web/account_form.html", account=account, form=form, errors={})
    form = {k: field(k, 300) for k in ("name", "email", "company")}
    try:
        with hg().uow(user_actor()) as ctx:
            accounts.update_account(ctx, account.id, name=form["name"], email=form["email"],
                                    company=form["company"])
    except HushgateError as exc:
        return render_template("web/account_form.html", account=account, form=form,
                               errors=errors_of(exc)), error_status(exc)
    flash("Account updated.")
    return redirect(url_for("web.account_detail", account_id=account.id))


def _act(account_id: str, action: Any, message: str) -> Any:
    """Run one audited service call for an account page form and come back to the page."""
    try:
        with hg().uow(user_actor()) as ctx:
            action(ctx)
    except HushgateError as exc:
        return _account_page(account_id, errors=errors_of(exc), status=error_status(exc))
    flash(message)
    return redirect(url_for("web.account_detail", account_id=account_id))


@bp.post("/accounts/<account_id>/status")
@admin_required("admin")
def account_status(account_id: str) -> Any:
    status = field("status", 16)

    def run(ctx: Any) -> None:
        accounts.set_account_status(ctx, account_id, status)

    return _act(account_id, run, f"Account {'enabled' if status == 'active' else 'disabled'}.")


@bp.post("/accounts/<account_id>/delete")
@admin_required("admin")
def account_delete(account_id: str) -> Any:
    if request.form.get("confirm") != "yes":
        return _account_page(account_id, errors={"confirm": "tick the box to confirm deletion"},
                             status=422)
    def run(ctx: Any) -> None:
        if accounts.get_account(ctx.session, account_id).status in ("deleted", "erased"):
            return
        accounts.delete_account(ctx, account_id)

    return _act(account_id, run,
                "Account deleted: access ended; personal data is erased after the grace window.")


@bp.post("/accounts/<account_id>/erase")
@admin_required("admin")
def account_erase(account_id: str) -> Any:
    confirm = request.form.get("confirm") == "yes"
    return _act(account_id, lambda ctx: erasure.erase_account(ctx, account_id, confirm=confirm),
                "Personal data erased.")


# -- keys -----------------------------------------------------------------------------------


@bp.post("/accounts/<account_id>/keys")
@admin_required("admin")
def key_create(account_id: str) -> Any:
    try:
        models = request.form.getlist("models") or None
        budget_raw = field("budget", 40)
        budget = hg().parse_money(budget_raw, field="budget") if budget_raw else None
        with hg().uow(user_actor()) as ctx:
            key, raw = keys.create_key(ctx, account_id, name=field("name", 100) or None,
                                       allowed_models=models,
                                       expires_at=optional_datetime("expires_at"),
                                       rpm_limit=optional_int("rpm_limit"),
                                       tpm_limit=optional_int("tpm_limit"), budget=budget)
    except HushgateError as exc:
        return _account_page(account_id, errors=errors_of(exc), status=error_status(exc))
    # Rendered once, never stored in the session or anywhere else.
    return _account_page(account_id, new_key=raw)


@bp.post("/keys/<key_id>/revoke")
@admin_required("admin")
def key_revoke(key_id: str) -> Any:
    with hg().reader() as db:
        try:
            account_id = keys.get_key(db, key_id).account_id
        except NotFound:
            abort(404)
    def run(ctx: Any) -> None:
        keys.revoke_key(ctx, key_id, reason=field("reason", 200) or None)

    return _act(account_id, run, f"Key {key_id} revoked.")


@bp.post("/keys/<key_id>/rotate")
@admin_required("admin")
def key_rotate(key_id: str) -> Any:
    with hg().reader() as db:
        try:
            account_id = keys.get_key(db, key_id).account_id
        except NotFound:
            abort(404)
    try:
        grace = optional_int("grace_seconds") or 0
        with hg().uow(user_actor()) as ctx:
            new, raw = keys.rotate_key(ctx, key_id, grace_seconds=grace)
    except HushgateError as exc:
        return _account_page(account_id, errors=errors_of(exc), status=error_status(exc))
    return _account_page(account_id, new_key=raw)


# -- wallet ---------------------------------------------------------------------------------


@bp.post("/accounts/<account_id>/topup")
@admin_required("admin")
def wallet_topup(account_id: str) -> Any:
    try:
        amount = hg().parse_money(field("amount", 40))
        idem = field("idempotency_key", 200)
        with hg().uow(user_actor()) as ctx:
            _, created = wallet.topup(ctx, account_id, amount, idempotency_key=idem or None,
                                      reference=field("reference", 100) or None)
    except HushgateError as exc:
        return _account_page(account_id, errors=errors_of(exc), status=error_status(exc))
    flash("Wallet topped up." if created else "This top-up was already applied.")
    return redirect(url_for("web.account_detail", account_id=account_id))


@bp.post("/accounts/<account_id>/adjust")
@admin_required("admin")
def wallet_adjust(account_id: str) -> Any:
    try:
        amount = hg().parse_money(field("amount", 40), allow_negative=True)
        idem = field("idempotency_key", 200)
        with hg().uow(user_actor()) as ctx:
            _, created = wallet.adjust(ctx, account_id, amount, reason=field("reason", 500),
                                       idempotency_key=idem or None)
    except HushgateError as exc:
        return _account_page(account_id, errors=errors_of(exc), status=error_status(exc))
    flash("Adjustment recorded." if created else "This adjustment was already applied.")
    return redirect(url_for("web.account_detail", account_id=account_id))


@bp.get("/accounts/<account_id>/ledger")
@admin_required()
def ledger(account_id: str) -> Any:
    before = query_int("before")
    with hg().reader() as db:
        account = _load_account(db, account_id)
        rows = wallet.history(db, account.id, limit=PAGE, before_id=before)
    return render_template("web/ledger.html", account=account, rows=rows,
                           next_before=rows[-1].id if len(rows) == PAGE else None)


# -- audit, retention, operators ------------------------------------------------------------


@bp.get("/audit")
@admin_required()
def audit_log() -> Any:
    filters = {k: (request.args.get(k) or "").strip()[:100] or None
               for k in ("action", "actor", "target_id")}
    before = query_int("before")
    with hg().reader() as db:
        rows = audit.list_events(db, limit=PAGE, before_seq=before, **filters)
    return render_template("web/audit.html", rows=rows, filters=filters,
                           actions=[a.value for a in audit.Action], verify=hg().last_verify,
                           money_keys=AUDIT_MONEY_KEYS,
                           next_before=rows[-1].seq if len(rows) == PAGE else None)


@bp.get("/audit/verify")
@admin_required()
def audit_verify() -> Any:
    result = audit.verdict(hg().db, hg().config)
    hg().last_verify = {"ok": result.ok, "checked": result.checked,
                        "head_seq": result.head_seq, "problem": result.problem,
                        "at": utcnow()}
    flash("Audit chain verified: intact." if result.ok
          else f"Audit chain verification FAILED: {result.problem}")
    return redirect(url_for("web.audit_log"))


@bp.get("/retention")
@admin_required()
def retention() -> Any:
    with hg().reader() as db:
        status = retention_service.retention_status(db, hg().config)
    return render_template("web/retention.html", status=_retention_rows(status),
                           windows=hg().config.retention)


# Audit details that are wallet amounts (minor units): shown in the currency.
AUDIT_MONEY_KEYS = frozenset({"amount", "amount_released", "balance", "owed"})

# (key of retention_status, label, what an empty value means)
_RETENTION_ROWS = [
    ("last_run", "Last purge", "never yet"),
    ("next_run", "Next purge", "after the first run"),
    ("oldest_request_record", "Oldest request record", "none kept"),
    ("oldest_request_record_age_days", "Its age (days)", "—"),
    ("request_records_due", "Request records past their window", "0"),
    ("oldest_audit_event", "Oldest audit event", "none"),
    ("audit_events_due", "Audit events past their window", "0"),
    ("audit_window_days_enforced", "Audit window the database enforces (days)", "—"),
    ("audit_window_days_pending", "Audit window taking effect later (days)", "no change pending"),
    ("audit_window_pending_from", "… from", "—"),
    ("audit_checkpoint_seq", "Signed purge checkpoint (event #)", "none yet"),
    ("accounts_due_for_erasure", "Deleted accounts due for erasure", "0"),
    ("expired_holds", "Wallet holds left by a crashed process", "0"),
]


def _retention_rows(status: dict[str, Any]) -> list[tuple[str, str]]:
    """The retention status as a reader wants it: labels, times in UTC, no "None"."""
    rows = []
    for key, label, empty in _RETENTION_ROWS:
        value = status.get(key)
        if value is None or value == "":
            text = empty
        elif isinstance(value, str) and "T" in value and value[:4].isdigit():
            text = value.replace("T", " ")[:19] + " UTC"
        else:
            text = str(value)
        rows.append((label, text))
    return rows


@bp.post("/retention/run")
@admin_required("admin")
def retention_run() -> Any:
    report = retention_service.run_retention(hg().db, hg().config,
                               dry_run=request.form.get("dry_run") == "yes", actor=user_actor())
    flash(f"Retention run finished: {report}.")
    return redirect(url_for("web.retention"))


def _operators_page(new_token: str | None = None, errors: dict[str, str] | None = None,
                    status: int = 200) -> Any:
    """Operators and tokens; a viewer sees only their own tokens, on every path."""
    user = current_user()
    assert user is not None
    with hg().reader() as db:
        users = admin_tokens.list_users(db)
        tokens = admin_tokens.list_tokens(db, None if user.role == "admin" else user.id)
    return render_template("web/operators.html", users=users, tokens=tokens,
                           new_token=new_token, errors=errors or {}), status


@bp.get("/operators")
@admin_required()
def operators() -> Any:
    return _operators_page()


@bp.post("/tokens")
@admin_required()
def token_create() -> Any:
    user = current_user()
    assert user is not None
    try:
        with hg().uow(user_actor()) as ctx:
            _, raw = admin_tokens.create_token(ctx, user.id, scope=field("scope", 8) or "read",
                                               name=field("name", 100) or None)
    except HushgateError as exc:
        return _operators_page(errors=errors_of(exc), status=error_status(exc))
    return _operators_page(new_token=raw)


@bp.post("/tokens/<key_id>/revoke")
@admin_required()
def token_revoke(key_id: str) -> Any:
    user = current_user()
    assert user is not None
    with hg().reader() as db:
        token = db.get(admin_tokens.AdminToken, key_id[:16])
    if token is None:
        abort(404)
    if token.user_id != user.id and user.role != "admin":
        abort(403)
    with hg().uow(user_actor()) as ctx:
        admin_tokens.revoke_token(ctx, key_id)
    flash(f"Token {key_id} revoked.")
    return redirect(url_for("web.operators"))


@bp.post("/users/<user_id>/totp/disable")
@admin_required("admin")
def user_totp_disable(user_id: str) -> Any:
    """An admin turns off another operator's second factor (e.g. a lost device)."""
    me = current_user()
    assert me is not None
    if user_id == me.id:
        return redirect(url_for("web.security"))  # one's own needs a current code
    try:
        with hg().uow(user_actor()) as ctx:
            was_on = totp.disable(ctx, user_id[:32])
    except NotFound:
        abort(404)
    flash("Two-factor sign-in turned off." if was_on else "Two-factor sign-in was not on.")
    return redirect(url_for("web.operators"))


# -- the signed-in operator's own security settings -----------------------------------------


def _security_page(errors: dict[str, str] | None = None, status: int = 200) -> Any:
    me = current_user()
    assert me is not None
    with hg().reader() as db:
        user = db.get(User, me.id)
    assert user is not None
    enrollment = totp.pending_enrollment(hg().config, user)
    return render_template("web/security.html", me=user, totp_state=totp.state(user),
                           enrollment=enrollment,
                           qr=qr_svg(enrollment.uri) if enrollment else None,
                           errors=errors or {}), status


@bp.get("/security")
@admin_required()
def security() -> Any:
    return _security_page()


@bp.post("/security/totp/begin")
@admin_required()
def totp_begin() -> Any:
    try:
        with hg().uow(user_actor()) as ctx:
            totp.begin_enrollment(ctx, user_actor().id)
    except HushgateError as exc:
        return _security_page(errors_of(exc), error_status(exc))
    # The secret is shown by the page (from the encrypted column), never put in the session.
    return redirect(url_for("web.security"))


@bp.post("/security/totp/confirm")
@admin_required()
def totp_confirm() -> Any:
    try:
        with hg().uow(user_actor()) as ctx:
            totp.confirm_enrollment(ctx, user_actor().id, field("code", 20))
    except HushgateError as exc:
        return _security_page(errors_of(exc), error_status(exc))
    flash("Two-factor sign-in is on: signing in now asks for a code after the password.")
    return redirect(url_for("web.security"))


@bp.post("/security/totp/cancel")
@admin_required()
def totp_cancel() -> Any:
    try:
        with hg().uow(user_actor()) as ctx:
            totp.cancel_enrollment(ctx, user_actor().id)
    except HushgateError as exc:
        return _security_page(errors_of(exc), error_status(exc))
    flash("Set-up cancelled.")
    return redirect(url_for("web.security"))


@bp.post("/security/totp/disable")
@admin_required()
def totp_disable() -> Any:
    error: HushgateError | None = None
    with hg().uow(user_actor()) as ctx:
        try:
            totp.disable(ctx, user_actor().id, code=field("code", 20))
        except HushgateError as exc:  # caught inside: a wrong code's failure record is kept
            error = exc
    if error is not None:
        status = 429 if isinstance(error, sessions.SignInThrottled) else error_status(error)
        return _security_page(errors_of(error), status)
    flash("Two-factor sign-in is off.")
    return redirect(url_for("web.security"))


@bp.post("/security/password")
@admin_required()
def password_change() -> Any:
    """An operator changes their own password (the current one is required); their other
    sessions end, this one stays."""
    me = current_user()
    assert me is not None
    try:
        new = new_password()
        with hg().uow(user_actor()) as ctx:
            passwords.change_own_password(ctx, me.id, request.form.get("current_password")
                                          or "", new, keep_session=current_sid())
    except HushgateError as exc:
        return _security_page(errors=errors_of(exc), status=error_status(exc))
    flash("Your password is changed; your other sessions have ended.")
    return redirect(url_for("web.security"))


@bp.post("/users/<user_id>/password")
@admin_required("admin")
def user_password_set(user_id: str) -> Any:
    try:
        new = new_password()
        with hg().uow(user_actor()) as ctx:
            user = passwords.set_user_password(ctx, user_id[:32], new)
            name = user.username
    except HushgateError as exc:
        return _operators_page(errors=errors_of(exc), status=error_status(exc))
    flash(f"New password set for {name}; their sessions have ended.")
    return redirect(url_for("web.operators"))


@bp.post("/users/<user_id>/delete")
@admin_required("admin")
def user_delete(user_id: str) -> Any:
    try:
        with hg().uow(user_actor()) as ctx:
            passwords.delete_user(ctx, user_id[:32])
    except HushgateError as exc:
        return _operators_page(errors=errors_of(exc), status=error_status(exc))
    flash("Operator deleted; their sessions and API tokens are gone.")
    return redirect(url_for("web.operators"))


@bp.post("/accounts/<account_id>/invite")
@admin_required("admin")
def account_invite(account_id: str) -> Any:
    try:
        with hg().uow(user_actor()) as ctx:
            passwords.invite_account(ctx, account_id[:32])
    except HushgateError as exc:
        flash(f"Not sent: {exc}")
    else:
        flash("Invitation queued: the holder gets a single-use link to set a password.")
    return redirect(url_for("web.account_detail", account_id=account_id[:32]))


@bp.post("/users/<user_id>/sessions/revoke")
@admin_required("admin")
def user_sessions_revoke(user_id: str) -> Any:
    with hg().uow(user_actor()) as ctx:
        n = sessions.revoke_principal(ctx, "user", user_id[:32])
    flash(f"Ended {n} session(s).")
    return redirect(url_for("web.operators"))

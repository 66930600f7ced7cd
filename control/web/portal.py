"""The account holders' portal (blueprint ``portal`` under /portal): the policy's rights —
access, correction, export, deletion, opting out — plus their keys, usage and wallet."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from control.core import (
    accounts,
    audit,
    export,
    keys,
    money,
    passwords,
    payments,
    sessions,
    stats,
    wallet,
)
from control.core.errors import HushgateError, NotFound
from control.web.admin import dashboard_charts
from control.web.auth import (
    account_actor,
    account_required,
    begin,
    client_address,
    current_account,
    current_sid,
    finish,
    throttled_response,
)
from control.web.ext import hg
from control.web.forms import error_status, errors_of, field, new_password, query_int

bp = Blueprint("portal", __name__, template_folder="templates")
PAGE = 50
PROFILE = ("name", "email", "company")


@bp.context_processor
def _inject() -> dict[str, Any]:
    return {"account": current_account(), "area": "portal"}


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Any:
    age = hg().config.policy.get("minimum_age", 18)
    if request.method == "GET":
        return render_template("portal/signup.html", form={}, errors={}, age=age)
    form = {k: field(k, 300) for k in PROFILE}
    try:
        password = new_password()
        with hg().db.transaction() as db:
            account = accounts.create_account(
                _ctx(db, audit.Actor("account", "signup")), **form,
                adult_attested=request.form.get("adult") == "yes", password=password,
                opt_out_non_essential=request.form.get("opt_out") == "yes")
            token = sessions.start(db, "account", account.id)
            account_id = account.id
    except HushgateError as exc:
        return render_template("portal/signup.html", form=form, errors=errors_of(exc),
                               age=age), error_status(exc)
    begin(token, "account", account_id)
    flash("Welcome! Your account is ready.")
    return redirect(url_for("portal.home"))


def _ctx(db: Any, actor: audit.Actor) -> Any:
    from control.core.context import Ctx

    return Ctx(db, hg().config, actor)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return render_template("portal/login.html", errors={})
    error: HushgateError | None = None
    with hg().db.transaction() as db:
        try:
            signed_in = sessions.sign_in(db, hg().config, "account", field("email", 254),
                                         request.form.get("password") or "",
                                         client=client_address(), replaces=current_sid())
        except (sessions.SignInRefused, sessions.SignInThrottled) as exc:
            error = exc
    if error is not None:
        page = render_template("portal/login.html", errors={"_": str(error)})
        if isinstance(error, sessions.SignInThrottled):
            return throttled_response(page, error)
        return page, 401
    begin(signed_in.token, "account", signed_in.principal_id)
    return redirect(url_for("portal.home"))


@bp.route("/forgot", methods=["GET", "POST"])
def forgot() -> Any:
    """"Forgot password": the same answer for every address (no oracle); an active account
    gets a single-use link by e-mail."""
    if request.method == "GET":
        return render_template("portal/forgot.html", sent=False, errors={})
    email = field("email", 254) or ""
    with hg().uow(audit.Actor("account", "password-reset")) as ctx:
        passwords.request_reset(ctx, email)
    return render_template("portal/forgot.html", sent=True, errors={})


@bp.route("/password/<path:token>", methods=["GET", "POST"])
def set_password(token: str) -> Any:
    """The page an e-mailed reset or invitation link opens: choose a password, once."""
    try:
        with hg().reader() as db:
            purpose = passwords.check_link(db, hg().config, token)
    except passwords.InvalidLink as exc:
        return render_template("portal/password.html", invalid=str(exc), purpose=None,
                               errors={}), 404
    if request.method == "GET":
        return render_template("portal/password.html", invalid=None, purpose=purpose,
                               errors={})
    try:
        password = new_password()
        with hg().uow(audit.Actor("account", "password-link")) as ctx:
            passwords.set_password_with_token(ctx, token, password)
    except passwords.InvalidLink as exc:
        return render_template("portal/password.html", invalid=str(exc), purpose=None,
                               errors={}), 404
    except HushgateError as exc:
        return render_template("portal/password.html", invalid=None, purpose=purpose,
                               errors=errors_of(exc)), error_status(exc)
    flash("Your password is set. Sign in with it.")
    return redirect(url_for("portal.login"))


@bp.post("/logout")
def logout() -> Any:
    finish()
    return redirect(url_for("portal.login"))


def _me() -> Any:
    account = current_account()
    assert account is not None
    return account


@bp.get("/")
def home() -> Any:
    account = current_account()
    if account is None:
        return render_template("portal/welcome.html")
    with hg().reader() as db:
        balance = wallet.get_balance(db, account.id)
        d = stats.dashboard(db, window="30d", account_id=account.id)
        recent = stats.recent_records(db, limit=10, account_id=account.id)
    return _home_page(balance=balance, d=d, charts=dashboard_charts(d), recent=recent)


def _home_page(errors: dict[str, str] | None = None, status: int = 200, **data: Any) -> Any:
    """The overview: balance, where to send requests, what they cost, and "Add credit"."""
    config = hg().config
    credit = payments.enabled(config)
    bounds = payments.amount_bounds(config) if credit else None
    return render_template("portal/home.html", gateway_url=payments.gateway_url(config),
                           prices=payments.price_list(config), credit=credit, bounds=bounds,
                           errors=errors or {}, **data), status


@bp.post("/credit")
@account_required
def credit() -> Any:
    """Start a self-service top-up: a Checkout Session at the processor. The wallet is
    credited only by the processor's signed webhook, once the payment has succeeded."""
    config = hg().config
    w = config.wallet
    try:
        amount = money.parse_amount(field("amount", 32) or "", scale=w["minor_unit_scale"],
                                    max_amount=w["max_amount"])
        with hg().uow(account_actor()) as ctx:
            checkout = payments.create_checkout(ctx, _me().id, amount)
    except HushgateError as exc:
        with hg().reader() as db:
            balance = wallet.get_balance(db, _me().id)
        return _home_page(errors=errors_of(exc), status=error_status(exc), balance=balance,
                          d=None, charts=None, recent=[])
    # A page with the link, not a redirect: the CSP's form-action 'self' would block a
    # redirect to the processor after this POST.
    return render_template("portal/credit.html", checkout=checkout)


@bp.get("/keys")
@account_required
def key_list() -> Any:
    return _keys_page()


def _keys_page(new_key: str | None = None, errors: dict[str, str] | None = None,
               status: int = 200) -> Any:
    with hg().reader() as db:
        rows = keys.list_keys(db, _me().id)
    return render_template("portal/keys.html", keys=rows, new_key=new_key, errors=errors or {},
                           models=sorted(hg().config.models)), status


@bp.post("/keys")
@account_required
def key_create() -> Any:
    try:
        with hg().uow(account_actor()) as ctx:
            key, raw = keys.create_key(ctx, _me().id, name=field("name", 100) or None,
                                       allowed_models=request.form.getlist("models") or None)
    except HushgateError as exc:
        return _keys_page(errors=errors_of(exc), status=error_status(exc))
    return _keys_page(new_key=raw)


@bp.post("/keys/<key_id>/revoke")
@account_required
def key_revoke(key_id: str) -> Any:
    with hg().reader() as db:
        try:
            key = keys.get_key(db, key_id)
        except NotFound:
            abort(404)
    if key.account_id != _me().id:
        abort(404)
    with hg().uow(account_actor()) as ctx:
        keys.revoke_key(ctx, key_id, reason="revoked by the account holder")
    flash(f"Key {key_id} revoked.")
    return redirect(url_for("portal.key_list"))


@bp.get("/ledger")
@account_required
def ledger() -> Any:
    before = query_int("before")
    with hg().reader() as db:
        balance = wallet.get_balance(db, _me().id)
        rows = wallet.history(db, _me().id, limit=PAGE, before_id=before)
    return render_template("portal/ledger.html", balance=balance, rows=rows,
                           next_before=rows[-1].id if len(rows) == PAGE else None)


@bp.get("/export")
@account_required
def export_page() -> Any:
    return render_template("portal/export.html")


@bp.post("/export")
@account_required
def export_download() -> Any:
    account_id = _me().id
    with hg().uow(account_actor()) as ctx:
        export.audit_export(ctx, account_id, via="portal")
    config, db = hg().config, hg().db

    def chunks() -> Iterator[str]:
        with db.read_transaction() as session:
            yield from export.iter_export(session, config, account_id)

    return Response(stream_with_context(chunks()), mimetype="application/json", headers={
        "Content-Disposition": f'attachment; filename="hushgate-export-{account_id}.json"'})


@bp.route("/profile", methods=["GET", "POST"])
@account_required
def profile() -> Any:
    me = _me()
    if request.method == "GET":
        form = {k: getattr(me, k) for k in PROFILE}
        return render_template("portal/profile.html", form=form, errors={})
    form = {k: field(k, 300) for k in PROFILE}
    try:
        with hg().uow(account_actor()) as ctx:
            accounts.update_account(ctx, me.id, **form)
    except HushgateError as exc:
        return render_template("portal/profile.html", form=form,
                               errors=errors_of(exc)), error_status(exc)
    flash("Profile updated.")
    return redirect(url_for("portal.profile"))


@bp.post("/preferences")
@account_required
def preferences() -> Any:
    with hg().uow(account_actor()) as ctx:
        accounts.set_preferences(ctx, _me().id,
                                 opt_out_non_essential=request.form.get("opt_out") == "yes")
    flash("Communication preferences saved.")
    return redirect(url_for("portal.profile"))


@bp.route("/delete", methods=["GET", "POST"])
@account_required
def delete() -> Any:
    if request.method == "GET":
        return render_template("portal/delete.html", errors={})
    me = _me()
    errors = {}
    if request.form.get("confirm") != "yes":
        errors["confirm"] = "tick the box to confirm"
    if not accounts.check_password(request.form.get("password") or "", me.password_hash,
                                   hg().config.auth["bcrypt_cost"]):
        errors["password"] = "the password is wrong"
    if errors:
        return render_template("portal/delete.html", errors=errors), 422
    days = hg().config.retention["deleted_account_erasure_days"]
    with hg().uow(account_actor()) as ctx:
        accounts.delete_account(ctx, me.id)
    finish()
    return render_template("portal/deleted.html", days=days, account=None)

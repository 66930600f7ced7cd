"""Sessions, sign-in throttling, CSRF and response headers."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from web_helpers import ADMIN_PW, Browser, config_with, sign_in, sqlite_only

from control.core.base import utcnow
from control.core.models import AuditEvent, LoginFailure, WebSession
from control.web import create_app


def _count(db, model) -> int:
    with db.read_transaction() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_security_headers_on_every_kind_of_response(client, admin):
    for resp in (client.get("/admin/login"), client.get("/policy"), client.get("/nowhere"),
                 client.get("/api/v1/me"), admin.get("/admin/")):
        h = resp.headers
        assert h["Content-Security-Policy"].startswith("default-src 'self'; frame-ancestors 'none'")
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "no-referrer"
        assert h["Cache-Control"] == "no-store"
        assert "Strict-Transport-Security" not in h  # plain HTTP (loopback): no HSTS


def test_one_session_cookie_httponly_lax_not_secure_on_loopback(client, admin_user):
    b = Browser(client)
    resp = client.get("/admin/login")
    cookies = resp.headers.getlist("Set-Cookie")
    assert len(cookies) == 1
    assert cookies[0].startswith("hushgate_session=a.")
    assert "HttpOnly" in cookies[0] and "SameSite=Lax" in cookies[0]
    assert "Secure" not in cookies[0]
    resp = sign_in(b, "root", ADMIN_PW)
    cookies = resp.headers.getlist("Set-Cookie")
    assert len(cookies) == 1 and cookies[0].startswith("hushgate_session=s.")


@sqlite_only
def test_secure_cookie_when_configured(config, db):
    cfg = config_with(config, control={"secure_cookies": True})
    resp = create_app(cfg, db).test_client().get("/admin/login")
    assert "Secure" in resp.headers["Set-Cookie"]


def test_anonymous_pages_write_no_session_rows(client, db):
    client.get("/admin/login")
    client.get("/portal/signup")
    assert _count(db, WebSession) == 0


def test_login_regenerates_session_and_stores_only_a_hash(client, db, admin_user):
    b = Browser(client)
    b.get("/admin/login")
    before = b.cookie()
    assert sign_in(b, "root", ADMIN_PW).status_code == 302
    after = b.cookie()
    assert after != before and after.startswith("s.")
    token = after[2:]
    with db.read_transaction() as s:
        ids = list(s.scalars(select(WebSession.id)))
    assert len(ids) == 1 and token not in ids[0]
    assert b.get("/admin/").status_code == 200


def test_csrf_is_enforced_and_nothing_is_written(client, db, admin_user):
    before = _count(db, AuditEvent)
    resp = client.post("/admin/login", data={"username": "root", "password": ADMIN_PW})
    assert resp.status_code == 400
    assert _count(db, WebSession) == 0
    assert _count(db, AuditEvent) == before


def test_csrf_enforced_for_signed_in_forms(admin, db):
    before = _count(db, AuditEvent)
    resp = admin.client.post("/admin/accounts/new",
                             data={"name": "X", "email": "x@example.com", "adult": "yes"})
    assert resp.status_code == 400
    resp = admin.client.post("/admin/accounts/new", data={
        "name": "X", "email": "x@example.com", "adult": "yes", "csrf_token": "forged"})
    assert resp.status_code == 400
    assert _count(db, AuditEvent) == before


def test_wrong_password_is_refused_and_audited(client, db, admin_user):
    b = Browser(client)
    resp = sign_in(b, "root", "wrong password!")
    assert resp.status_code == 401
    assert "wrong name or password" in resp.get_data(as_text=True)
    assert _count(db, WebSession) == 0
    assert _count(db, LoginFailure) == 2  # the name's and the client's budget
    with db.read_transaction() as s:
        actions = list(s.scalars(select(AuditEvent.action)))
        subjects = list(s.scalars(select(LoginFailure.subject)))
    assert "user.sign_in_failed" in actions
    assert not any("root" in x or "127.0.0.1" in x for x in subjects)


def test_a_failing_client_is_throttled_even_with_the_right_password(client, db, config,
                                                                    admin_user):
    b = Browser(client)
    for _ in range(config.control["login_max_attempts"]):
        assert sign_in(b, "root", "wrong password!").status_code == 401
    resp = sign_in(b, "root", ADMIN_PW)
    assert resp.status_code == 429
    assert _count(db, WebSession) == 0
    # Old failures leave the window: allowed again.
    with db.transaction() as s:
        s.execute(update(LoginFailure).values(created_at=utcnow() - timedelta(hours=1)))
    assert sign_in(b, "root", ADMIN_PW).status_code == 302


def test_logout_revokes_the_server_session(admin, db):
    old = admin.cookie()
    resp = admin.post("/admin/logout", page="/admin/")
    assert resp.status_code == 302
    assert admin.get("/admin/").status_code == 302  # back to the login page
    with db.read_transaction() as s:
        assert s.scalar(select(WebSession.revoked_at)) is not None
    # Replaying the old cookie does not work either.
    admin.client.set_cookie("hushgate_session", old)
    assert admin.get("/admin/").status_code == 302


def test_idle_and_absolute_timeouts(admin, db, config):
    assert admin.get("/admin/").status_code == 200
    idle = timedelta(minutes=config.control["session_idle_minutes"] + 1)
    with db.transaction() as s:
        s.execute(update(WebSession).values(last_seen_at=utcnow() - idle))
    assert admin.get("/admin/").status_code == 302
    with db.transaction() as s:
        s.execute(update(WebSession).values(
            last_seen_at=utcnow(),
            created_at=utcnow() - timedelta(hours=config.control["session_absolute_hours"] + 1)))
    assert admin.get("/admin/").status_code == 302


def test_admin_action_revokes_sessions(admin, app, admin_user, db):
    other = Browser(app.test_client())
    assert sign_in(other, "root", ADMIN_PW).status_code == 302
    resp = admin.post(f"/admin/users/{admin_user}/sessions/revoke", page="/admin/operators")
    assert resp.status_code == 302
    assert other.get("/admin/").status_code == 302
    with db.read_transaction() as s:
        assert "session.revoked" in list(s.scalars(select(AuditEvent.action)))


def test_open_redirect_is_refused(client, admin_user):
    b = Browser(client)
    token = b.token("/admin/login")
    resp = client.post("/admin/login", data={"username": "root", "password": ADMIN_PW,
                                             "next": "//evil.example/", "csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/"


def test_no_page_loads_third_party_resources(admin):
    for page in ("/admin/", "/admin/accounts", "/admin/audit", "/policy"):
        html = admin.get(page).get_data(as_text=True)
        assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in html
        assert "<script" not in html


@sqlite_only
def test_forms_work_over_https_without_referer(config, db, admin_user):
    """Behind a TLS terminator: Secure cookie, and no Referer (no-referrer policy) is fine."""
    cfg = config_with(config, control={"secure_cookies": True})
    client = create_app(cfg, db).test_client()
    page = client.get("/admin/login", base_url="https://hushgate.example")
    assert "Secure" in page.headers["Set-Cookie"]
    from web_helpers import csrf_from

    resp = client.post("/admin/login", base_url="https://hushgate.example", data={
        "username": "root", "password": ADMIN_PW,
        "csrf_token": csrf_from(page.get_data(as_text=True))})
    assert resp.status_code == 302
    assert "Secure" in resp.headers["Set-Cookie"]


CANARY_EMAIL = "canary-7d1e@example.com"


def _failing_create_account(ctx, **fields):
    """A database error whose statement carries what the user typed (as a real one would)."""
    from sqlalchemy import text

    ctx.session.execute(text("INSERT INTO no_such_table (email, name) VALUES (:e, :n)"),
                        {"e": fields["email"], "n": fields["name"]})


@pytest.mark.parametrize("where", ["api", "portal"])
def test_an_unexpected_error_logs_no_user_input_and_answers_generically(
        where, app, api, client, db, monkeypatch, caplog):
    from control.core import accounts
    from control.core.models import Account

    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production (TESTING re-raises)
    monkeypatch.setattr(accounts, "create_account", _failing_create_account)
    caplog.set_level(logging.DEBUG)
    if where == "api":
        resp = api("POST", "/accounts", json={"name": "Canary Name", "email": CANARY_EMAIL,
                                              "adult_attested": True})
        assert resp.status_code == 500 and resp.is_json
        assert resp.get_json()["error"]["code"] == "internal_error"
    else:
        page = client.get("/portal/signup")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        resp = client.post("/portal/signup", data={
            "csrf_token": token, "name": "Canary Name", "email": CANARY_EMAIL,
            "password": "a long enough password", "password2": "a long enough password",
            "adult": "yes"})
        assert resp.status_code == 500 and "Something went wrong" in resp.text
    assert CANARY_EMAIL not in resp.get_data(as_text=True)
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") + str(r.exc_text or "")
                       for r in caplog.records)
    # the failure is logged, by class and route only
    assert "unhandled OperationalError" in logged or "unhandled ProgrammingError" in logged
    assert CANARY_EMAIL not in logged and "Canary Name" not in logged
    with db.read_transaction() as s:  # nothing half-written
        assert s.query(Account).filter_by(email=CANARY_EMAIL).count() == 0

"""Two-factor sign-in through the admin UI: set-up on the Security page, the second sign-in
step, what a half-finished sign-in can reach, replay, throttling, turning it off, and the
secret never being stored in plain text."""

from __future__ import annotations

import base64
import re
import time
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import func, select, text, update
from web_helpers import ADMIN_PW, VIEWER_PW, Browser, sign_in

from control.core import sessions, totp
from control.core.base import Base, utcnow
from control.core.models import AuditEvent, LoginFailure, User, WebSession

SECRET_RE = re.compile(r'<code id="totp-secret">([^<]+)</code>')


class Clock:
    """The server's TOTP clock, frozen and moved on by the test (no wall-clock races)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def next_code(self, secret: str, steps: int = 1) -> str:
        self.t += 30 * steps
        return pyotp.TOTP(secret).at(self.t)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(totp, "clock", c)
    return c


def _events(db, action: str) -> list[AuditEvent]:
    with db.read_transaction() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                              .order_by(AuditEvent.seq)))
        s.expunge_all()
        return rows


def _count(db, model, *where) -> int:
    with db.read_transaction() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def _state(db, user_id: str) -> str:
    with db.read_transaction() as s:
        return totp.state(s.get(User, user_id))


def start_setup(b: Browser) -> tuple[str, str]:
    """Press "Set up" on the Security page; returns the shown secret and the page."""
    resp = b.post("/admin/security/totp/begin", page="/admin/security")
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/security"
    html = b.get("/admin/security").get_data(as_text=True)
    return SECRET_RE.search(html).group(1).replace(" ", ""), html


def confirm(b: Browser, code: str):
    return b.post("/admin/security/totp/confirm", {"code": code}, page="/admin/security")


def password_step(app, username: str = "root", password: str = ADMIN_PW) -> Browser:
    b = Browser(app.test_client())
    resp = sign_in(b, username, password)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    assert resp.headers["Location"].startswith("/admin/login/code"), resp.headers["Location"]
    return b


def code_step(b: Browser, code: str):
    return b.post("/admin/login/code", {"code": code}, page="/admin/login/code")


@pytest.fixture
def secret(admin, clock) -> str:
    """``root`` (signed in as ``admin``) with two-factor sign-in on."""
    secret, _ = start_setup(admin)
    assert confirm(admin, clock.next_code(secret, 0)).status_code == 302
    return secret


def test_set_up_and_sign_in_with_a_code(app, admin, db, admin_user, clock):
    html = admin.get("/admin/security").get_data(as_text=True)
    assert "Set up two-factor sign-in" in html and 'href="/admin/security"' in html
    secret, html = start_setup(admin)
    assert len(secret) == 32
    # The QR code is inline SVG drawn on the server: no script, no inline style, no image.
    assert '<svg width="' in html and 'class="qr"' in html
    assert "style=" not in html and "<script" not in html and "<img" not in html
    assert f'href="otpauth://totp/hushgate:root?secret={secret}&amp;' in html
    # Not on until confirmed: the password alone still signs in.
    b = Browser(app.test_client())
    assert sign_in(b, "root", ADMIN_PW).headers["Location"] == "/admin/"
    resp = confirm(admin, "000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    assert resp.status_code == 422 and "wrong" in resp.get_data(as_text=True)
    assert _state(db, admin_user) == "pending"

    assert confirm(admin, pyotp.TOTP(secret).now()).status_code == 302
    html = admin.get("/admin/security").get_data(as_text=True)
    assert "Two-factor sign-in is on" in html and secret not in html
    assert "totp-secret" not in html
    [enabled] = _events(db, "user.totp_enabled")
    assert enabled.actor == f"user:{admin_user}"

    b = password_step(app)
    assert "Two-factor sign-in" in b.get("/admin/login/code").get_data(as_text=True)
    assert b.get("/admin/").status_code == 302
    pending_cookie = b.cookie()
    resp = code_step(b, clock.next_code(secret, 2))
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/"
    assert b.cookie() != pending_cookie
    assert b.get("/admin/").status_code == 200
    assert _events(db, "user.signed_in")[-1].details == {"factor": "totp"}
    # The pending cookie is spent.
    b.client.set_cookie("hushgate_session", pending_cookie)
    assert b.get("/admin/login/code").status_code == 302


def test_wrong_code_is_refused_and_nothing_is_authenticated(app, db, admin_user, secret,
                                                            clock):
    b = password_step(app)
    right = clock.next_code(secret)
    resp = code_step(b, f"{(int(right) + 1) % 10**6:06d}")
    assert resp.status_code == 401
    assert "wrong or was already used" in resp.get_data(as_text=True)
    assert b.get("/admin/").status_code == 302
    # Only the enrolling admin's own session is signed in.
    assert _count(db, WebSession, WebSession.principal_kind == "user",
                  WebSession.revoked_at.is_(None)) == 1
    assert _count(db, LoginFailure) == 1
    assert _events(db, "user.sign_in_failed")[-1].details == {"factor": "totp"}
    # Still pending: the right code now works.
    assert code_step(b, right).headers["Location"] == "/admin/"


def test_a_code_works_once(app, db, secret, clock):
    code = clock.next_code(secret)
    b = password_step(app)
    assert code_step(b, code).status_code == 302
    assert b.post("/admin/logout", page="/admin/").status_code == 302
    again = password_step(app)
    assert code_step(again, code).status_code == 401  # replayed
    previous = pyotp.TOTP(secret).at(clock.t - 30)  # still inside the window, but older
    assert code_step(again, previous).status_code == 401
    assert again.get("/admin/").status_code == 302
    assert code_step(again, clock.next_code(secret)).status_code == 302
    assert again.get("/admin/").status_code == 200


def _rules(app, method: str) -> list[str]:
    skip = {"/admin/login", "/admin/logout", "/admin/login/code"}
    return sorted(re.sub(r"<[^>]+>", "x" * 8, r.rule) for r in app.url_map.iter_rules()
                  if r.rule.startswith("/admin") and method in r.methods and r.rule not in skip)


def test_a_half_finished_sign_in_reaches_nothing(app, db, secret, funded_account):
    b = password_step(app)
    gets = _rules(app, "GET")
    assert "/admin/security" in gets and len(gets) >= 10
    for url in gets:
        resp = b.get(url)
        assert resp.status_code == 302, url
        assert resp.headers["Location"].startswith("/admin/login"), url
    before = _count(db, AuditEvent)
    token = b.token("/admin/login/code")
    for url in _rules(app, "POST"):
        resp = b.client.post(url.replace("xxxxxxxx", funded_account),
                             data={"csrf_token": token, "amount": "5", "confirm": "yes"})
        assert resp.status_code == 302, url
    assert _count(db, AuditEvent) == before
    assert b.get("/portal/keys").status_code == 302  # an account holder's page
    assert b.get("/api/v1/me").status_code == 401


def test_the_code_step_expires(app, db, secret, clock):
    b = password_step(app)
    with db.transaction() as s:
        s.execute(update(WebSession).where(WebSession.principal_kind == "pending").values(
            created_at=utcnow() - timedelta(seconds=sessions.PENDING_SECONDS + 1)))
    code = clock.next_code(secret)
    resp = code_step(b, code)
    assert resp.status_code == 401 and "timed out" in resp.get_data(as_text=True)
    assert b.cookie() is None
    assert b.get("/admin/").status_code == 302
    # The code was not spent on the expired step.
    assert code_step(password_step(app), code).status_code == 302


def test_wrong_codes_share_the_sign_in_throttle(app, db, config, secret, clock):
    limit = config.control["login_max_attempts"]
    right = clock.next_code(secret)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    b = password_step(app)
    for _ in range(limit - 1):
        assert code_step(b, wrong).status_code == 401
    # Entering the password again does not reset the count.
    b = password_step(app)
    assert code_step(b, wrong).status_code == 401
    resp = code_step(b, right)
    assert resp.status_code == 429
    assert b.cookie() is None  # the pending step ended
    resp = b.post("/admin/login/code", {"code": right}, page="/admin/login")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/admin/login")
    # Wrong codes have their own hard limit (only someone with the password gets this far,
    # so it can't be used to lock the operator out): the password is accepted again, the
    # code step stays refused until the window passes.
    assert sign_in(b, "root", ADMIN_PW).status_code == 302
    assert code_step(b, clock.next_code(secret)).status_code == 429
    assert _count(db, LoginFailure) == limit
    assert _count(db, WebSession, WebSession.principal_kind == "user",
                  WebSession.revoked_at.is_(None)) == 1  # only the enrolling admin's


def test_turning_it_off_needs_a_current_code(app, admin, db, admin_user, secret, clock):
    page = "/admin/security"
    resp = admin.post("/admin/security/totp/disable", {"code": "123"}, page=page)
    assert resp.status_code == 422
    used = pyotp.TOTP(secret).at(clock.t)  # the confirmation's code
    assert admin.post("/admin/security/totp/disable", {"code": used}, page=page
                      ).status_code == 422
    assert _state(db, admin_user) == "on" and _count(db, LoginFailure) == 2
    resp = admin.post("/admin/security/totp/disable", {"code": clock.next_code(secret)},
                      page=page)
    assert resp.status_code == 302
    assert "Two-factor sign-in is off." in admin.get(page).get_data(as_text=True)
    assert _state(db, admin_user) == "off"
    [event] = _events(db, "user.totp_disabled")
    assert event.actor == f"user:{admin_user}" and event.details == {"method": "code"}
    b = Browser(app.test_client())
    assert sign_in(b, "root", ADMIN_PW).headers["Location"] == "/admin/"


def test_set_up_can_be_cancelled(admin, db, admin_user, clock):
    start_setup(admin)
    assert admin.post("/admin/security/totp/cancel", page="/admin/security").status_code == 302
    assert _state(db, admin_user) == "off"
    with db.read_transaction() as s:
        assert s.get(User, admin_user).totp_secret_enc is None


def test_an_admin_turns_it_off_for_another_operator(app, admin, viewer, db, admin_user,
                                                     viewer_user, clock):
    viewer_secret, _ = start_setup(viewer)  # viewers may protect their own sign-in
    assert confirm(viewer, clock.next_code(viewer_secret, 0)).status_code == 302
    assert _state(db, viewer_user) == "on"
    html = admin.get("/admin/operators").get_data(as_text=True)
    assert 'data-totp-reset="watcher"' in html
    assert viewer.post(f"/admin/users/{admin_user}/totp/disable",
                       page="/admin/operators").status_code == 403
    resp = admin.post(f"/admin/users/{viewer_user}/totp/disable", page="/admin/operators")
    assert resp.status_code == 302
    assert _state(db, viewer_user) == "off"
    [event] = _events(db, "user.totp_disabled")
    assert event.actor == f"user:{admin_user}" and event.target_id == viewer_user
    assert event.details == {"method": "reset"}
    b = Browser(app.test_client())
    assert sign_in(b, "watcher", VIEWER_PW).headers["Location"] == "/admin/"


def test_the_secret_is_not_stored_in_plain_text(app, admin, db, config, secret, clock):
    b = password_step(app)
    assert code_step(b, clock.next_code(secret)).status_code == 302
    raw = base64.b32decode(secret)
    needles = [secret, secret.lower(), secret.encode().hex()]
    with db.read_transaction() as s:
        stored = s.scalar(select(User.totp_secret_enc))
        assert stored.startswith("v1.")
        for table in Base.metadata.sorted_tables:
            for row in s.execute(text(f"SELECT * FROM {table.name}")):  # noqa: S608
                dumped = repr(tuple(row))
                assert not any(n in dumped for n in needles), table.name
    if db.dialect == "sqlite":
        path = Path(db.engine.url.database)
        files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        assert files
        for f in files:
            data = f.read_bytes()
            assert secret.encode() not in data and raw not in data, f.name
            assert secret.lower().encode() not in data, f.name

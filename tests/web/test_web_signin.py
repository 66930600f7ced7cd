"""Sign-in without oracles or lockouts: equal bcrypt work for unknown names, throttling per
client and per name with growing waits instead of a lockout anyone can trigger, and a new
sign-in ending the browser's previous session."""

from __future__ import annotations

import statistics
import time

import pytest
from sqlalchemy import select
from web_helpers import ADMIN_PW, HOLDER_PW, Browser, config_with, csrf_from

from control.core import accounts
from control.core.audit import Actor
from control.core.context import Ctx
from control.core.models import WebSession
from control.web import create_app


def _client(app, ip):
    c = app.test_client()
    c.environ_base["REMOTE_ADDR"] = ip
    return c


def _post_login(app, ip, url, data):
    c = _client(app, ip)
    token = csrf_from(c.get(url).get_data(as_text=True))
    return c.post(url, data={**data, "csrf_token": token})


def test_the_right_password_from_a_client_that_has_not_been_failing_signs_in(app, admin_user,
                                                                           config):
    for _ in range(config.control["login_max_attempts"] + 2):
        _post_login(app, "10.0.0.66", "/admin/login", {"username": "root", "password": "nope"})
    # The attacker's own client is held back, with a Retry-After ...
    resp = _post_login(app, "10.0.0.66", "/admin/login",
                       {"username": "root", "password": ADMIN_PW})
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    # ... but the operator, from elsewhere, is not locked out.
    resp = _post_login(app, "10.0.0.7", "/admin/login",
                       {"username": "root", "password": ADMIN_PW})
    assert resp.status_code == 302


def test_a_spray_of_many_names_from_one_client_is_slowed(app, admin_user, config):
    statuses = [_post_login(app, "10.0.0.99", "/admin/login",
                            {"username": f"user{i:02d}", "password": "Winter2026!"}).status_code
                for i in range(50)]
    free = config.control["login_client_free_attempts"]
    assert statuses[:free] == [401] * free
    # Each further attempt must wait twice as long after the last failure: nearly all
    # of the rest are refused without a password check (a stall could let one or two by).
    assert statuses.count(429) >= 50 - free - 3 and set(statuses) <= {401, 429}
    # Another client is unaffected.
    assert _post_login(app, "10.0.0.8", "/admin/login",
                       {"username": "root", "password": ADMIN_PW}).status_code == 302


@pytest.mark.parametrize("kind", ["user", "account"])
def test_unknown_and_known_names_cost_the_same(config, db, kind):
    """Medians of 7 wrong-password sign-ins each; bcrypt at cost 8 for the test (the dummy
    used to be cost 4: 16x cheaper). Every try comes from a fresh client address, so the
    throttle never answers instead of bcrypt."""
    cfg = config_with(config, auth={"bcrypt_cost": 8})
    app = create_app(cfg, db, TESTING=True)
    with db.transaction() as s:
        ctx = Ctx(s, cfg, Actor("test", "timing"))
        if kind == "user":
            accounts.create_user(ctx, username="realname", password=ADMIN_PW)
        else:
            accounts.create_account(ctx, name="R", email="real@example.com",
                                    adult_attested=True, password=HOLDER_PW)
    url = "/admin/login" if kind == "user" else "/portal/login"
    field = "username" if kind == "user" else "email"
    known, unknown = ("realname", "nobody-here") if kind == "user" else \
        ("real@example.com", "nobody@example.com")

    def timed(name, i):
        c = _client(app, f"10.1.{i}.{1 if name == known else 2}")
        token = csrf_from(c.get(url).get_data(as_text=True))
        start = time.perf_counter()
        resp = c.post(url, data={field: name, "password": "wrong password 1",
                                 "csrf_token": token})
        elapsed = time.perf_counter() - start
        assert resp.status_code == 401
        return elapsed

    times_known, times_unknown = [], []
    for i in range(7):
        times_known.append(timed(known, i))
        times_unknown.append(timed(unknown, i))
    ratio = statistics.median(times_unknown) / statistics.median(times_known)
    assert 0.5 <= ratio <= 2.0, ratio


def test_signing_in_again_ends_the_previous_session(app, admin_user, db):
    b = Browser(app.test_client())
    token = b.token("/admin/login")
    assert b.client.post("/admin/login", data={"username": "root", "password": ADMIN_PW,
                                               "csrf_token": token}).status_code == 302
    old = b.cookie()
    token = b.token("/admin/login")
    assert b.client.post("/admin/login", data={"username": "root", "password": ADMIN_PW,
                                               "csrf_token": token}).status_code == 302
    assert b.cookie() != old
    with db.read_transaction() as s:
        live = s.scalars(select(WebSession).where(WebSession.revoked_at.is_(None))).all()
    assert len(live) == 1
    replay = app.test_client()
    replay.set_cookie("hushgate_session", old)
    assert replay.get("/admin/").status_code == 302  # the old cookie signs nobody in

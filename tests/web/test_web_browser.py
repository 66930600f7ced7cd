"""End to end in headless Chromium (Playwright driving Debian's chromium).

An admin signs in, creates an account, issues a key, tops up, sees a request on the
dashboard and revokes the key; an account holder signs up, exports their data and deletes
the account. Every page loads only same-origin resources and sets one cookie.
Set HUSHGATE_SCREENSHOTS=1 to refresh docs/screenshots/*.png.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from web_helpers import ADMIN_PW, sqlite_only

from control.core import accounts, records
from control.core.base import utcnow
from control.web.server import ControlServer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

pytestmark = pytest.mark.browser


def _record(i: int, account_id: str | None, key_id: str | None, minutes_ago: float,
            model: str = "sim-gpt", status: int = 200, latency: int = 420) -> dict:
    return {"time": (utcnow() - timedelta(minutes=minutes_ago)).isoformat(),
            "request_id": f"e2e-{i}", "account_id": account_id, "key_id": key_id,
            "endpoint": "chat.completions", "method": "POST", "provider": "simulator",
            "model": model, "stream": False, "status": status,
            "error_type": None if status < 400 else "upstream_error", "input_tokens": 120,
            "output_tokens": 80, "cached_tokens": 0, "estimated": False, "cost": 66_000,
            "latency_ms": latency, "ttfb_ms": 90, "upstream_ms": latency - 20,
            "request_bytes": 900, "response_bytes": 1400, "client_ip": None, "user_agent": None}


@pytest.fixture
def live(config, db, uow):
    with uow() as ctx:
        accounts.create_user(ctx, username="root", password=ADMIN_PW, role="admin")
    server = ControlServer(config, host="127.0.0.1", port=0, db=db, threads=4).start()
    yield server
    server.stop()


@pytest.fixture
def chromium():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():  # a failure, not a skip: `./dev test` installs it
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM} "
                    "(apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


class Watch:
    """Every request a page makes, to prove nothing leaves the origin."""

    def __init__(self, context, origin: str) -> None:
        self.origin = origin
        self.urls: list[str] = []
        context.on("request", lambda req: self.urls.append(req.url))

    def foreign(self) -> list[str]:
        return [u for u in self.urls
                if not (u.startswith(self.origin + "/") or u.startswith(("data:", "blob:")))]


def _shot(page, name: str, tmp: Path) -> None:
    path = tmp / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("HUSHGATE_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / f"{name}.png")


@sqlite_only
def test_admin_tour(live, chromium, db, tmp_path):
    origin = live.url
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    watch = Watch(context, origin)
    page = context.new_page()
    page.goto(f"{origin}/admin/")
    assert "/admin/login" in page.url
    _shot(page, "admin-sign-in", tmp_path)
    page.fill("input[name=username]", "root")
    page.fill("input[name=password]", ADMIN_PW)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{origin}/admin/")
    assert "Dashboard" in page.inner_text("h1")

    page.click("nav >> text=Accounts")
    page.click("text=New account")
    page.fill("input[name=name]", "Ada Lovelace")
    page.fill("input[name=email]", "ada@example.com")
    page.fill("input[name=company]", "Analytical Engines")
    page.check("input[name=adult]")
    page.click("main button[type=submit]")
    assert "Account created." in page.content()
    account_id = page.url.rsplit("/", 1)[1]

    page.fill("form[action$='/keys'] input[name=name]", "production")
    page.click("form[action$='/keys'] button[type=submit]")
    raw_key = page.inner_text("#new-key")
    assert raw_key.startswith("hg_")
    key_id = raw_key.split("_")[1]
    _shot(page, "admin-account-new-key", tmp_path)

    page.fill("form[action$='/topup'] input[name=amount]", "25.00")
    page.click("form[action$='/topup'] button[type=submit]")
    assert "Wallet topped up." in page.content()
    assert "25.000000 USD" in page.content()
    assert raw_key not in page.content()  # shown once only

    # A request through the gateway leaves one metadata record (inserted here directly).
    rng = random.Random(5)
    rows = [_record(0, account_id, key_id, 1)]
    rows += [_record(i, account_id, key_id, rng.uniform(2, 1430),
                     model=rng.choice(["sim-gpt", "sim-gpt", "sim-claude", "sim-embed"]),
                     status=rng.choice([200] * 19 + [502]), latency=int(rng.lognormvariate(6, .6)))
             for i in range(1, 240)]
    rows.sort(key=lambda r: r["time"])  # the proxy writes in time order
    with db.transaction() as s:
        records.insert_records(s, rows)
    page.click("nav >> text=Dashboard")
    assert key_id in page.inner_text("table.data >> nth=1")
    assert page.locator("svg.chart").count() >= 6
    _shot(page, "admin-dashboard", tmp_path)

    page.click("nav >> text=Accounts")
    _shot(page, "admin-accounts", tmp_path)
    page.click("text=Ada Lovelace")
    page.click(f"button[data-key='{key_id}']")
    assert f"Key {key_id} revoked." in page.content()
    assert page.locator("span.badge.revoked").count() == 1
    _shot(page, "admin-account", tmp_path)

    page.click("text=Audit log")
    page.click("text=Verify the chain now")
    assert "intact" in page.content()
    _shot(page, "admin-audit", tmp_path)
    page.click("text=Retention")
    _shot(page, "admin-retention", tmp_path)
    page.goto(f"{origin}/policy")
    _shot(page, "policy", tmp_path)

    assert watch.foreign() == []
    assert [c["name"] for c in context.cookies()] == ["hushgate_session"]
    cookie = context.cookies()[0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    context.close()


@sqlite_only
def test_account_holder_tour(live, chromium, db, tmp_path):
    origin = live.url
    context = chromium.new_context(viewport={"width": 1280, "height": 900},
                                   accept_downloads=True)
    watch = Watch(context, origin)
    page = context.new_page()
    page.goto(f"{origin}/portal/signup")
    page.fill("input[name=name]", "Grace Hopper")
    page.fill("input[name=email]", "grace@example.com")
    page.fill("input[name=password]", "a long password")
    page.fill("input[name=password2]", "a long password")
    page.click("main button[type=submit]")
    # the 18+ attestation is required
    assert "18 or older" in page.content() or "older" in page.content()
    page.fill("input[name=password]", "a long password")
    page.fill("input[name=password2]", "a long password")
    page.check("input[name=adult]")
    page.click("main button[type=submit]")
    page.wait_for_url(f"{origin}/portal/")
    assert "Hello, Grace Hopper" in page.content()
    _shot(page, "portal-home", tmp_path)

    page.click("text=Keys")
    page.fill("input[name=name]", "laptop")
    page.click("form.card button[type=submit]")
    assert page.inner_text("#new-key").startswith("hg_")
    _shot(page, "portal-keys", tmp_path)

    page.click("text=Export")
    with page.expect_download() as info:
        page.click("#export")
    path = info.value.path()
    doc = json.loads(Path(path).read_text())
    assert "grace@example.com" in json.dumps(doc)
    _shot(page, "portal-export", tmp_path)

    page.click("text=Profile")
    _shot(page, "portal-profile", tmp_path)
    page.click("text=Delete account")
    page.fill("input[name=password]", "a long password")
    page.check("input[name=confirm]")
    page.click("button.danger")
    assert "Your account is deleted" in page.content()
    page.goto(f"{origin}/portal/keys")
    assert "/portal/login" in page.url

    assert watch.foreign() == []
    assert {c["name"] for c in context.cookies()} <= {"hushgate_session"}
    context.close()

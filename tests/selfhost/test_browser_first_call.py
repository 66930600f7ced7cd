"""#12's first week, in headless Chromium: a new account holder signs up on the portal, sees
the base URL and the prices, adds credit through the processor (the local Stripe double, its
hosted page and its signed webhook to the real control plane), creates a key and makes a
call with the official openai SDK through a real hushgate proxy, which is charged."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import openai
import pytest
import requests
from sqlalchemy import select
from stripe_double import StripeDouble

from control.core import wallet
from control.core.db import Database
from control.core.models import Account, LedgerEntry
from control.simulator import Simulator
from control.web.server import ControlServer
from proxy_addons.runner import ProxyServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))
from proxy_helpers import PROVIDER_KEY, PROVIDER_KEY_ENV, catalog  # noqa: E402
from test_web_browser import ARGS, CHROMIUM  # noqa: E402

pytestmark = pytest.mark.browser

SECRET_KEY = "sk_test_hushgate_double_0123456789"
WEBHOOK_SECRET = "whsec_test_hushgate_double"
EMAIL, PASSWORD = "dorothy@example.com", "a long enough password"


@pytest.fixture
def stack(config_factory, db_url, port_factory, monkeypatch):
    """Simulator, proxy and control plane on their configured ports, Stripe double wired to
    the control plane's webhook over HTTP."""
    monkeypatch.setenv(PROVIDER_KEY_ENV, PROVIDER_KEY)
    monkeypatch.setenv("HUSHGATE_STRIPE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("HUSHGATE_PAYMENT_WEBHOOK_SECRET", WEBHOOK_SECRET)
    control_port, proxy_port = port_factory(), port_factory()
    sim = Simulator(port=0)
    sim.start()
    hooks: dict[str, str] = {}

    def deliver(body: bytes, headers: dict[str, str]) -> int:
        return requests.post(hooks["url"], data=body, headers=headers, timeout=10).status_code

    double = StripeDouble(SECRET_KEY, WEBHOOK_SECRET, deliver).__enter__()
    config = config_factory(
        db_url, proxy={"listen_port": proxy_port, "record_flush_ms": 20},
        control={"listen_port": control_port},
        payments={"provider": "stripe", "api_base": double.api_base},
        **catalog(sim.base_url))
    db = Database.from_config(config)
    control = ControlServer(config, host="127.0.0.1", port=control_port, db=db,
                            threads=4).start()
    hooks["url"] = f"http://127.0.0.1:{control_port}/webhooks/payments"
    proxy = ProxyServer(config, listen_port=proxy_port).start()
    try:
        yield f"http://127.0.0.1:{control_port}", db, double
    finally:
        proxy.stop()
        control.stop()
        double.__exit__(None, None, None)
        sim.stop()
        db.dispose()


def test_sign_up_add_credit_and_make_a_charged_call(stack):
    from playwright.sync_api import sync_playwright

    base, db, double = stack
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_context().new_page()
            page.goto(f"{base}/portal/signup")
            page.fill("input[name=name]", "Dorothy Vaughan")
            page.fill("input[name=email]", EMAIL)
            page.fill("input[name=password]", PASSWORD)
            page.fill("input[name=password2]", PASSWORD)
            page.check("input[name=adult]")
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/portal/")
            gateway = page.inner_text("#base-url")
            assert "gpt-test" in page.content()

            page.fill("#credit-amount", "5")
            page.click("#add-credit")
            page.click("#continue-to-payment")  # the processor's hosted page
            page.wait_for_url(re.compile(re.escape(double.api_base) + "/pay/"))
            page.click("button[type=submit]")  # pay; it returns to the portal
            page.wait_for_url(re.compile(re.escape(base) + r"/portal/ledger"))
            page.goto(f"{base}/portal/")
            assert "5.00" in page.inner_text("#available")

            page.goto(f"{base}/portal/keys")
            page.click("text=Create key")
            key = page.inner_text("#new-key").strip()
        finally:
            browser.close()

    with openai.OpenAI(base_url=gateway, api_key=key, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="gpt-test", max_tokens=20, messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content
    # The charge is durable before the answer ends (the outcome journal); the database
    # copy follows within the group-commit interval.
    for _ in range(100):
        with db.read_transaction() as s:
            account_id = s.scalar(select(Account.id).where(Account.email == EMAIL))
            kinds = list(s.scalars(select(LedgerEntry.kind).where(
                LedgerEntry.account_id == account_id).order_by(LedgerEntry.id)))
            balance = wallet.get_balance(s, account_id).balance
        if "usage" in kinds:
            break
        time.sleep(0.1)
    assert kinds[0] in ("payment", "topup") and "usage" in kinds, kinds
    assert 0 < balance < 5_000_000

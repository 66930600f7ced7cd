"""Accounts in debt (usage charged in full beyond what the account had) on the admin
dashboard and in the API, and the dashboard's warning while the policy names placeholders."""

from __future__ import annotations

from web_helpers import config_with

from control.core import outcomes, wallet
from control.core.base import utcnow
from control.core.outcomes import Outcome
from control.web import create_app


def _into_debt(db, account_id: str) -> int:
    """A provider-reported charge beyond the hold and the balance, as the proxy settles it."""
    with db.transaction() as s:
        hold = wallet.reserve(s, account_id, 10_000)
    record = {"time": utcnow(), "request_id": "req-debt-0001", "account_id": account_id,
              "key_id": None, "endpoint": "chat.completions", "method": "POST",
              "provider": "simulator", "model": "sim-gpt", "stream": False, "status": 200,
              "error_type": None, "input_tokens": 10, "output_tokens": 20, "cached_tokens": 0,
              "estimated": False, "cost": 0, "latency_ms": 5, "ttfb_ms": 2, "upstream_ms": 3,
              "request_bytes": 100, "response_bytes": 200, "client_ip": None,
              "user_agent": None}
    with db.transaction() as s:
        done = outcomes.settle_outcomes(s, [Outcome(record, charge=12_500_000,
                                                    hold_id=hold.id)])
    return done.debt["req-debt-0001"]


def test_debts_on_the_dashboard_and_in_the_api(admin, api, db, funded_account):
    owed = _into_debt(db, funded_account)
    assert owed == 12_500_000 - 10_000_000
    page = admin.get("/admin/").get_data(as_text=True)
    assert 'id="debts"' in page and funded_account in page and "2.50" in page
    body = api("GET", "/wallet/debts").get_json()
    assert body == {"data": [{"account_id": funded_account, "owed": owed,
                              "balance": -owed, "held": 0}]}


def test_no_debts_no_table(admin, api, funded_account):
    assert 'id="debts"' not in admin.get("/admin/").get_data(as_text=True)
    assert api("GET", "/wallet/debts").get_json() == {"data": []}


def test_the_dashboard_warns_while_the_policy_names_placeholders(admin, config, db):
    page = admin.get("/admin/").get_data(as_text=True)
    assert 'id="policy-placeholders"' in page and "policy.contact_email" in page
    real = config_with(config, policy={"operator_name": "Acme AI",
                                       "contact_email": "privacy@acme-ai.com"})
    from web_helpers import Browser, sign_in

    b = Browser(create_app(real, db, TESTING=True).test_client())
    assert sign_in(b, "root", "correct horse battery").status_code == 302
    assert 'id="policy-placeholders"' not in b.get("/admin/").get_data(as_text=True)

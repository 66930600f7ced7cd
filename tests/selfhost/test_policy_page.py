"""The published policy is honest about what the code does, is dated when it was published
(never a shipped date), and placeholder operator details are reported."""

from __future__ import annotations

import re
from datetime import date

import pytest
import yaml
from selfhost_helpers import ROOT, reconfigured

from control.core import policy
from control.core.base import utcnow
from control.core.config import load_config
from control.web import create_app


def _page(config, db) -> str:
    app = create_app(config, db, TESTING=True)
    resp = app.test_client().get("/policy")
    assert resp.status_code == 200
    return resp.get_data(as_text=True)


def _human(d: date) -> str:
    return f"{d.strftime('%B')} {d.day}, {d.year}"


def test_the_policy_and_the_pages_agree_there_is_no_analytics(config, db):
    html = _page(config, db)
    assert "Analytics data is collected" not in html
    assert "No analytics" in html  # the footer of every page
    assert "We do not use advertising, analytics or third-party tracking cookies" in html
    assert "computed from the API request metadata of section 3, not from tracking" in html
    # The rights are the portal's pages, and the page says so.
    assert "in your account portal (profile, export, account deletion" in html


def test_a_fresh_install_is_dated_when_it_publishes_not_by_a_shipped_date(config, db, uow):
    assert config.policy["last_updated"] is None
    html = _page(config, db)
    assert "January 1, 2025" not in html
    assert f"Last updated: {_human(utcnow().date())}" in html
    with uow() as ctx:
        version = policy.publish_policy(ctx, today=date(2026, 2, 3))
    assert version is not None and version.last_updated == "2026-02-03"
    html = _page(config, db)
    assert "Last updated: February 3, 2026" in html
    # The date is a paragraph, the numbered clauses are the headings.
    headings = re.findall(r"<h2>([^<]+)</h2>", html)
    assert headings[0] == "1. Information We Collect" and len(headings) == 10
    assert '<p class="muted">Last updated: February 3, 2026</p>' in html


def test_a_configured_date_is_kept(config):
    pinned = reconfigured(config, policy={"last_updated": "2026-04-05"})
    assert "Last updated: April 5, 2026" in policy.render_policy(pinned)


def test_card_payments_are_disclosed_only_when_enabled(config):
    assert "Stripe" not in policy.render_policy(config)
    text = policy.render_policy(reconfigured(config, payments={"provider": "stripe"}))
    assert "your card details go to Stripe and never reach us" in text


def test_placeholder_details_are_reported(config, tmp_path):
    assert policy.placeholder_policy_fields(config) == ["policy.operator_name",
                                                        "policy.contact_email"]
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    from_example = load_config(overrides={"data_dir": str(tmp_path / "d"),
                                          "policy": example["policy"]})
    assert policy.placeholder_policy_fields(from_example) == ["policy.operator_name",
                                                              "policy.contact_email"]
    real = reconfigured(config, policy={"operator_name": "Acme AI",
                                        "contact_email": "dpo@acme.ai"})
    assert policy.placeholder_policy_fields(real) == []


@pytest.mark.parametrize("email", ["privacy@example.com", "dpo@mail.example.org",
                                   "dpo@acme.test", "root@localhost", "x@EXAMPLE.NET"])
def test_reserved_contact_domains_are_placeholders(config, email):
    c = reconfigured(config, policy={"operator_name": "Acme AI", "contact_email": email})
    assert policy.placeholder_policy_fields(c) == ["policy.contact_email"]

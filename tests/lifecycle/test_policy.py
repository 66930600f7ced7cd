"""The policy page is rendered from the configuration; changes are versioned and announced.
Also: corrections are audited by field name."""

from __future__ import annotations

from datetime import date

import pytest
from lifecycle_helpers import make_config

from control.core import accounts, audit, policy
from control.core.audit import Actor
from control.core.base import utcnow
from control.core.context import Ctx
from control.core.db import Database
from control.core.errors import Conflict
from control.core.models import Notification, PolicyVersion


def test_policy_reflects_the_configuration(tmp_path, db_url):
    config = make_config(tmp_path, db_url, retention={"request_records_days": 30,
                                                      "audit_events_days": 365,
                                                      "deleted_account_erasure_days": 1},
                         policy={"operator_name": "Acme AI", "contact_email": "dpo@acme.test",
                                 "last_updated": "2026-03-05", "minimum_age": 16})
    text = policy.render_policy(config)
    assert "API request logs are retained for 30 days." in text
    assert "Audit logs are retained for 365 days." in text
    assert "personal data is removed within 1 day except" in text
    assert "Last updated: March 5, 2026" in text
    assert "under 16 years of age" in text
    assert "Acme AI" in text and "dpo@acme.test" in text
    assert "$" not in text and "[email" not in text


def test_default_policy_matches_the_seed_numbers(config):
    text = policy.render_policy(config)
    for promise in ("retained for 90 days. Audit logs are retained for 90 days",
                    "removed within 30 days", "under 18 years of age",
                    # unpublished and undated by default: dated the day it is first published
                    f"Last updated: {policy._human_date(utcnow().date().isoformat())}"):
        assert promise in text


def test_changing_a_retention_setting_changes_the_published_text(tmp_path, db_url):
    a = make_config(tmp_path, db_url)
    b = make_config(tmp_path, db_url, retention={"request_records_days": 60})
    assert policy.render_policy(a) != policy.render_policy(b)
    assert "retained for 60 days" in policy.render_policy(b)
    assert policy.text_hash(a) != policy.text_hash(b)


def test_client_details_are_disclosed_only_when_collected(tmp_path, db_url):
    off = policy.render_policy(make_config(tmp_path, db_url))
    on = policy.render_policy(make_config(tmp_path, db_url,
                                          privacy={"client_ip": "truncated"}))
    assert "client IP" not in off and "a truncated client IP address" in on


def test_publishing_versions_dates_and_announces(tmp_path, db_url, uow, db, config):
    with uow() as ctx:
        first = accounts.create_account(ctx, name="A", email="a@example.com",
                                        adult_attested=True)
        out = accounts.create_account(ctx, name="B", email="b@example.com",
                                      adult_attested=True, opt_out_non_essential=True)
        gone = accounts.create_account(ctx, name="C", email="c@example.com",
                                       adult_attested=True)
        accounts.delete_account(ctx, gone.id)
        baseline = policy.publish_policy(ctx, today=date(2026, 6, 1))
    # no date configured: the first publication dates it
    assert baseline is not None and baseline.last_updated == "2026-06-01"
    with uow() as ctx:
        assert policy.publish_policy(ctx, today=date(2026, 6, 2)) is None  # unchanged
    with db.read_transaction() as s:
        assert s.query(Notification).filter(  # the baseline announces nothing
            Notification.kind == "policy_changed").count() == 0

    changed = make_config(tmp_path, db_url, retention={"audit_events_days": 180})
    db2 = Database.from_config(changed)
    try:
        with db2.transaction() as s:
            ctx = Ctx(s, changed, Actor("cli", "tester"))
            version = policy.publish_policy(ctx, today=date(2026, 6, 3), notes="longer audit")
        assert version is not None and version.last_updated == "2026-06-03"
        with db2.read_transaction() as s:
            text = policy.render_policy(changed, session=s)
            notes = {(n.account_id, n.kind, n.status, n.essential)
                     for n in s.query(Notification).filter(
                         Notification.kind == "policy_changed")}
            ev = audit.list_events(s, limit=1)[0]
            assert (ev.action, ev.details["notified"]) == ("policy.changed", 2)
            assert s.query(PolicyVersion).count() == 2
    finally:
        db2.dispose()
    assert "Last updated: June 3, 2026" in text and "retained for 180 days" in text
    # essential: the opted-out account gets it too; the deleted one doesn't
    assert notes == {(first.id, "policy_changed", "queued", True),
                     (out.id, "policy_changed", "queued", True)}
    # a configured date is what the text says, whatever was published
    pinned = make_config(tmp_path, db_url, policy={"last_updated": "2025-01-01"})
    with db.read_transaction() as s:
        assert "Last updated: January 1, 2025" in policy.render_policy(pinned, session=s)


# -- correction -----------------------------------------------------------------------------


def test_corrections_are_audited_by_field_name_only(db, uow, funded_account):
    with uow() as ctx:
        accounts.update_account(ctx, funded_account, name="Ada King",
                                email="ada.king@example.com", company="Analytical")
        accounts.update_account(ctx, funded_account, name="Ada King")  # no change: no event
    with db.read_transaction() as s:
        events = [audit.event_dict(e) for e in audit.list_events(
            s, action="account.updated", target_id=funded_account)]
        a = accounts.get_account(s, funded_account)
        name_email = (a.name, a.email)
    assert len(events) == 1
    assert events[0]["details"] == {"fields": ["email", "name"]}  # company was unchanged
    assert "Ada King" not in repr(events) and "ada.king" not in repr(events)
    assert name_email == ("Ada King", "ada.king@example.com")


def test_correction_refuses_a_taken_email_and_deleted_accounts(uow, funded_account):
    with uow() as ctx:
        accounts.create_account(ctx, name="B", email="b@example.com", adult_attested=True)
    with uow() as ctx, pytest.raises(Conflict):
        accounts.update_account(ctx, funded_account, email="B@example.com")
    with uow() as ctx:
        accounts.delete_account(ctx, funded_account)
    from control.core.errors import ValidationError
    with uow() as ctx, pytest.raises(ValidationError):
        accounts.update_account(ctx, funded_account, name="X")

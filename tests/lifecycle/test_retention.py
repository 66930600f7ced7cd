"""Retention windows at their boundaries, batching, auditing, holds, status, scheduler."""

from __future__ import annotations

from datetime import timedelta

import pytest
from lifecycle_helpers import add_records, append_events, days_ago, make_config, sql
from sqlalchemy import select

from control.core import accounts, audit, retention, wallet
from control.core.audit import Action
from control.core.base import utcnow
from control.core.db import Database
from control.core.models import RequestRecord


def _count(db, table: str) -> int:
    return sql(db, f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608 - test table names


def _events(db, action: Action) -> list[dict]:
    with db.read_transaction() as s:
        return [audit.event_dict(e) for e in audit.list_events(s, action=action.value)]


def test_request_records_go_after_90_days_not_before(db, config, funded_account):
    now = utcnow()
    add_records(db, funded_account, [days_ago(89, now), days_ago(89.9, now)])
    add_records(db, funded_account, [days_ago(90.1, now), days_ago(91, now), days_ago(400, now)])
    report = retention.run_retention(db, config, now=now)
    assert report.request_records == 3
    assert _count(db, "request_records") == 2
    with db.read_transaction() as s:
        times = sorted(t for (t,) in s.execute(select(RequestRecord.time)))
    assert all(now - t < timedelta(days=90) for t in times)


def test_time_travel_with_now(db, config, funded_account):
    """The same record is kept on day 89 and removed on day 91."""
    t0 = utcnow()
    add_records(db, funded_account, [t0])
    assert retention.run_retention(db, config, now=t0 + timedelta(days=89)).request_records == 0
    assert _count(db, "request_records") == 1
    assert retention.run_retention(db, config, now=t0 + timedelta(days=91)).request_records == 1
    assert _count(db, "request_records") == 0


def test_configured_window_is_used(tmp_path, db_url, funded_account):
    config = make_config(tmp_path, db_url, retention={"request_records_days": 7})
    db = Database.from_config(config)
    try:
        add_records(db, funded_account, [days_ago(6), days_ago(8)])
        assert retention.run_retention(db, config).request_records == 1
    finally:
        db.dispose()


def test_audit_events_go_after_90_days_not_before(db, config, monkeypatch):
    append_events(db, config, monkeypatch, days_ago(91), n=3)
    append_events(db, config, monkeypatch, days_ago(89), n=2)
    assert retention.run_retention(db, config, dry_run=True).audit_events == 3
    report = retention.run_retention(db, config)
    assert report.audit_events == 3 and report.checkpoint_seq == 3
    with db.read_transaction() as s:
        remaining = [e.seq for e in audit.list_events(s)]
        assert audit.verify(s, config.audit_hmac_key(),
                            head_path=config.audit_head_path()).ok
    assert remaining == [7, 6, 5, 4]  # 2 kept at 89 days + the run's checkpoint and report


def test_purges_in_bounded_batches(tmp_path, db_url, monkeypatch):
    config = make_config(tmp_path, db_url, retention={"batch_size": 2})
    db = Database.from_config(config)
    try:
        add_records(db, None, [days_ago(100)] * 5)
        append_events(db, config, monkeypatch, days_ago(100), n=3)
        report = retention.run_retention(db, config)
        assert (report.request_records, report.audit_events) == (5, 3)
        assert report.batches >= 3 + 2  # 2+2+1 records, 2+1 events (+ the holds sweep)
        with db.read_transaction() as s:
            assert audit.verify(s, config.audit_hmac_key()).ok
    finally:
        db.dispose()


def test_dry_run_counts_and_changes_nothing(db, config, monkeypatch, funded_account):
    add_records(db, funded_account, [days_ago(91), days_ago(1)])
    append_events(db, config, monkeypatch, days_ago(91), n=2)
    events_before = _count(db, "audit_events")
    report = retention.run_retention(db, config, dry_run=True)
    # the funded account's recent events come first in the chain: no audit prefix is due
    assert report.dry_run and report.request_records == 1 and report.audit_events == 0
    assert _count(db, "request_records") == 2
    assert _count(db, "audit_events") == events_before
    assert _events(db, Action.RETENTION_PURGED) == []
    assert "would remove 1 request records" in str(report)


def test_each_run_is_audited_with_its_counts(db, config, funded_account):
    add_records(db, funded_account, [days_ago(91)] * 2)
    retention.run_retention(db, config)
    retention.run_retention(db, config)
    runs = _events(db, Action.RETENTION_PURGED)
    assert len(runs) == 2
    assert runs[1]["details"]["request_records"] == 2
    assert runs[0]["details"]["request_records"] == 0
    assert set(runs[0]["details"]) >= {"request_records", "audit_events", "erased_accounts",
                                    "expired_holds", "audit_window_days"}
    assert runs[0]["actor"] == "system:hushgate"


def test_ledger_entries_are_never_removed(db, config, funded_account):
    with db.transaction() as s:
        before = wallet.ledger_sum(s, funded_account)
    retention.run_retention(db, config, now=utcnow() + timedelta(days=3650))
    with db.read_transaction() as s:
        assert wallet.ledger_sum(s, funded_account) == before == 10_000_000
        assert len(wallet.history(s, funded_account)) == 1


def test_expired_holds_are_released(db, config, funded_account):
    with db.transaction() as s:
        wallet.reserve(s, funded_account, 500, ttl_seconds=60)
    report = retention.run_retention(db, config, now=utcnow() + timedelta(minutes=2))
    assert report.expired_holds == 1
    with db.read_transaction() as s:
        assert wallet.get_balance(s, funded_account).held == 0


@pytest.mark.parametrize("days_after, erased", [(29, False), (31, True)])
def test_deleted_accounts_are_erased_after_30_days(db, config, uow, funded_account,
                                                   days_after, erased):
    with uow() as ctx:
        deleted_at = accounts.delete_account(ctx, funded_account).deleted_at
    report = retention.run_retention(db, config, now=deleted_at + timedelta(days=days_after))
    assert report.erased_accounts == int(erased)
    with db.read_transaction() as s:
        a = accounts.get_account(s, funded_account)
        assert a.status == ("erased" if erased else "deleted")
        assert (a.email is None) == erased


def test_active_accounts_are_never_erased(db, config, funded_account):
    retention.run_retention(db, config, now=utcnow() + timedelta(days=3650))
    with db.read_transaction() as s:
        assert accounts.get_account(s, funded_account).status == "active"


def test_status_reports_what_is_due(db, config, monkeypatch, uow, funded_account):
    add_records(db, funded_account, [days_ago(95), days_ago(10)])
    with uow() as ctx:
        accounts.delete_account(ctx, funded_account)
    with db.read_transaction() as s:
        st = retention.retention_status(s, config, now=utcnow() + timedelta(days=31))
    assert st["request_records_due"] == 1  # 95 days old; the 10-day one is 41 days then
    assert st["accounts_due_for_erasure"] == 1
    assert st["oldest_request_record_age_days"] >= 95
    assert st["last_run"] is None and st["next_run"] is None
    retention.run_retention(db, config)
    with db.read_transaction() as s:
        st = retention.retention_status(s, config)
    assert st["request_records_due"] == 0 and st["last_run"] is not None
    assert st["next_run"] > st["last_run"]
    assert st["audit_window_days_enforced"] == 90

"""The database refuses to rewrite audit history; verify catches what gets past it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from lifecycle_helpers import append_events, days_ago, drop_audit_triggers, sql
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from control.core import accounts, audit, audit_head, retention
from control.core.base import utcnow
from control.core.models import AuditEvent


@pytest.fixture
def chain(db, config, monkeypatch, funded_account):
    """Five events 100 days old (seq 3..7) after the two of the funded account (seq 1..2)."""
    append_events(db, config, monkeypatch, days_ago(100), n=5)
    return funded_account


def _verify(db, config, head=True):
    with db.read_transaction() as s:
        return audit.verify(s, config.audit_hmac_key(),
                            head_path=config.audit_head_path() if head else None)


def test_update_of_any_audit_event_is_refused(db, chain):
    with pytest.raises(DBAPIError, match="immutable"):
        sql(db, "UPDATE audit_events SET actor = 'cli:mallory' WHERE seq = 1")
    with pytest.raises(DBAPIError, match="immutable"):
        sql(db, "UPDATE audit_events SET details = '{}'")


def test_delete_of_recent_events_is_refused(db, chain):
    with pytest.raises(DBAPIError, match="cannot be deleted"):
        sql(db, "DELETE FROM audit_events WHERE seq = 7")
    with pytest.raises(DBAPIError, match="cannot be deleted"):
        sql(db, "DELETE FROM audit_events")


def test_delete_of_old_events_without_a_checkpoint_is_refused(db, chain):
    # 100 days old, but not covered by the signed checkpoint: still refused.
    with pytest.raises(DBAPIError, match="cannot be deleted"):
        sql(db, "DELETE FROM audit_events WHERE seq = 3")


def test_moving_the_checkpoint_by_hand_doesnt_unlock_recent_events(db, config, chain):
    sql(db, "UPDATE audit_state SET checkpoint_seq = 1000 WHERE id = 1")
    with pytest.raises(DBAPIError, match="cannot be deleted"):
        sql(db, "DELETE FROM audit_events WHERE seq = 1")  # the funded account's: recent
    # ... and the forged checkpoint itself fails verification.
    assert not _verify(db, config).ok


def test_truncate_is_refused(db, chain, backend):
    if backend == "sqlite":
        # SQLite has no TRUNCATE; its truncate optimisation is off when a trigger exists.
        with pytest.raises(DBAPIError):
            sql(db, "DELETE FROM audit_events")
    else:
        with pytest.raises(DBAPIError, match="TRUNCATE"):
            sql(db, "TRUNCATE audit_events")
        with pytest.raises(DBAPIError, match="insert-only"):
            sql(db, "TRUNCATE audit_retention_windows")
    assert sql(db, "SELECT count(*) FROM audit_events")[0][0] == 7


def test_the_window_table_is_insert_only_and_shortening_is_delayed(db):
    with pytest.raises(DBAPIError, match="insert-only"):
        sql(db, "UPDATE audit_retention_windows SET days = 1")
    with pytest.raises(DBAPIError, match="insert-only"):
        sql(db, "DELETE FROM audit_retention_windows")
    now = utcnow()
    # An immediate 1-day window would unlock recent events: refused.
    with db.transaction() as s, pytest.raises(DBAPIError, match="shorter"):
        s.add(retention.AuditRetentionWindow(days=1, effective_at=now, created_at=now))
        s.flush()
    # Backdating the row's creation is refused too.
    with db.transaction() as s, pytest.raises(DBAPIError, match="shorter"):
        s.add(retention.AuditRetentionWindow(days=120, effective_at=now,
                                             created_at=now - timedelta(days=1)))
        s.flush()
    # Shortening after the current (90-day) window, and lengthening now, are accepted.
    with db.transaction() as s:
        s.add(retention.AuditRetentionWindow(days=30, effective_at=now + timedelta(days=90),
                                             created_at=now))
        s.flush()
        assert retention.enforced_audit_window(s) == 90
        s.add(retention.AuditRetentionWindow(days=120, effective_at=now, created_at=now))
        s.flush()
        assert retention.enforced_audit_window(s) == 120
        # the later lengthening outranks the earlier, still pending shortening
        assert retention.enforced_audit_window(s, now + timedelta(days=91)) == 120


def test_sync_shortens_only_after_the_current_window(db):
    with db.transaction() as s:
        row = retention.sync_audit_window(s, 30)
        assert row is not None and row.days == 30
        assert row.effective_at >= utcnow() + timedelta(days=89)
        assert retention.enforced_audit_window(s) == 90
        assert retention.sync_audit_window(s, 30) is None  # already pending: no new row


def test_verify_passes_after_a_purge(db, config, purged):
    result = _verify(db, config)
    # 5 purged; 3 recent + the purge's checkpoint and retention events remain
    assert result.ok and result.checked == 5 and result.head_seq == 10
    with db.read_transaction() as s:
        actions = [e.action for e in audit.list_events(s, limit=2)]
    assert actions == ["retention.purged", "audit.checkpoint"]


def test_purge_cuts_only_a_prefix_of_the_chain(db, config, monkeypatch, funded_account):
    # Old events *after* recent ones can't go: the checkpoint is one contiguous cut.
    report = retention.run_retention(db, config)
    assert report.audit_events == 0
    append_events(db, config, monkeypatch, days_ago(100), n=2)
    assert retention.run_retention(db, config).audit_events == 0
    assert _verify(db, config).ok


@pytest.fixture
def purged(db, config, monkeypatch):
    """Events 1..5 old and purged, 6..8 recent, head anchored."""
    append_events(db, config, monkeypatch, days_ago(100), n=5)
    append_events(db, config, monkeypatch, days_ago(1), n=3)
    report = retention.run_retention(db, config)
    assert report.audit_events == 5 and report.head_problem is None
    assert _verify(db, config).ok
    return report


def test_tampering_with_a_remaining_row_is_detected(db, config, purged):
    drop_audit_triggers(db)
    sql(db, "UPDATE audit_events SET actor = 'cli:mallory' WHERE seq = 7")
    result = _verify(db, config)
    assert not result.ok and result.bad_seq == 7 and "modified" in result.problem


def test_deleting_a_middle_row_is_detected(db, config, purged):
    drop_audit_triggers(db)
    sql(db, "DELETE FROM audit_events WHERE seq = 7")
    result = _verify(db, config)
    assert not result.ok and result.bad_seq == 7


def test_tampering_with_the_checkpoint_is_detected(db, config, purged):
    with pytest.raises(DBAPIError, match="only moves forward"):
        sql(db, "UPDATE audit_state SET checkpoint_seq = 4 WHERE id = 1")
    drop_audit_triggers(db)
    sql(db, "UPDATE audit_state SET checkpoint_seq = 4 WHERE id = 1")
    result = _verify(db, config, head=False)
    assert not result.ok and "audit state was changed" in result.problem


def test_forging_a_checkpoint_hash_is_detected(db, config, purged):
    sql(db, "UPDATE audit_state SET checkpoint_hash = :h WHERE id = 1", h="f" * 64)
    assert not _verify(db, config, head=False).ok


def test_removing_the_newest_events_is_caught_by_the_head_file(db, config, purged):
    with db.read_transaction() as s:
        head_seq, _ = audit_head.database_head(s)
        prev = s.scalar(select(AuditEvent.hash).where(AuditEvent.seq == head_seq - 2))
    drop_audit_triggers(db)
    sql(db, "DELETE FROM audit_events WHERE seq > :s", s=head_seq - 2)
    sql(db, "UPDATE audit_state SET last_seq = :s, last_hash = :h WHERE id = 1",
        s=head_seq - 2, h=prev)
    # The rewound state row no longer carries hushgate's signature ...
    assert "audit state was changed" in _verify(db, config, head=False).problem
    # ... and the head file shows the removal; the shorter head can't be anchored either.
    result = _verify(db, config)
    assert not result.ok
    with pytest.raises(audit_head.HeadFileError), db.read_transaction() as s:
        audit_head.anchor(s, config.audit_head_path(), config.audit_hmac_key())


def test_tampering_with_the_head_file_is_detected(db, config, purged):
    path = config.audit_head_path()
    lines = path.read_text().splitlines()
    entry = json.loads(lines[-1])
    entry["seq"] += 5
    path.write_text("\n".join([*lines[:-1], json.dumps(entry)]) + "\n")
    result = _verify(db, config)
    assert not result.ok and "head file" in result.problem


def test_head_file_anchors_grow_and_never_go_back(db, config, uow):
    key, path = config.audit_hmac_key(), config.audit_head_path()
    with db.read_transaction() as s:
        first = audit_head.anchor(s, path, key)
    with uow() as ctx:
        accounts.create_account(ctx, name="B", email="b@example.com", adult_attested=True)
    with db.read_transaction() as s:
        second = audit_head.anchor(s, path, key)
        again = audit_head.anchor(s, path, key)
    assert second.seq == first.seq + 1 and again == second
    assert len(audit_head.read_entries(path, key)) == 2
    with pytest.raises(audit_head.HeadFileError, match="behind"):
        audit_head.append_head(path, key, first.seq, first.hash)
    with pytest.raises(audit_head.HeadFileError, match="differs"):
        audit_head.append_head(path, key, second.seq, "0" * 64)


def test_migration_0002_downgrades_and_upgrades(db, config, monkeypatch):
    from alembic import command

    from control.core import schema

    cfg = schema.alembic_config()
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
        conn.commit()
    sql(db, "DELETE FROM audit_events")  # no triggers at 0001
    schema.upgrade(db)
    assert schema.is_current(db)
    append_events(db, config, monkeypatch, utcnow())
    with pytest.raises(DBAPIError, match="immutable"):
        sql(db, "UPDATE audit_events SET actor = 'x'")

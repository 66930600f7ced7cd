"""Cutting the audit history short, or wiping it, is detected without trusting the machine.

Each attack is what someone with plain SQL access and write access to the data folder (but
not the audit key) can do; `hushgate audit verify` must fail with one line, and the admin UI
and the API must say the same.
"""

from __future__ import annotations

import pytest
from lifecycle_helpers import append_events, days_ago, drop_audit_triggers, sql
from sqlalchemy.exc import DBAPIError

from control.core import audit, retention
from control.core.db import Database
from control.core.errors import ConfigError


@pytest.fixture
def history(cli_run, db, config, monkeypatch):
    """`hushgate init` (the first admin), six more events, verified and anchored."""
    cli_run("init", input=None)
    append_events(db, config, monkeypatch, days_ago(0), n=6)
    cli_run("audit", "verify")
    return config.audit_head_path()


def _state(db):
    return sql(db, "SELECT last_seq, last_hash, checkpoint_seq, checkpoint_hash, "
                   "anchored_seq, state_sig FROM audit_state WHERE id = 1")[0]


def _restore(db, row):
    sql(db, "UPDATE audit_state SET last_seq = :a, last_hash = :b, checkpoint_seq = :c, "
            "checkpoint_hash = :d, anchored_seq = :e, state_sig = :f WHERE id = 1",
        a=row[0], b=row[1], c=row[2], d=row[3], e=row[4], f=row[5])


def _hash_of(db, seq):
    return sql(db, "SELECT hash FROM audit_events WHERE seq = :s", s=seq)[0][0]


@pytest.fixture(autouse=True)
def _admin_pw(monkeypatch):
    monkeypatch.setenv("HUSHGATE_ADMIN_PASSWORD", "a-long-enough-password")


def test_deleting_the_tail_and_removing_the_head_file_fails_verify(cli_run, db, history):
    drop_audit_triggers(db)
    sql(db, "DELETE FROM audit_events WHERE seq > 4")
    sql(db, "UPDATE audit_state SET last_seq = 4, last_hash = :h WHERE id = 1",
        h=_hash_of(db, 4))
    history.unlink()
    out = cli_run("audit", "verify", ok=False).output
    assert "audit chain broken" in out and "audit state" in out


def test_wiping_everything_and_the_head_file_fails_verify(cli_run, db, history):
    drop_audit_triggers(db)
    sql(db, "DELETE FROM audit_events")
    sql(db, "UPDATE audit_state SET last_seq = 0, last_hash = :g, anchored_seq = 0, "
            "state_sig = NULL WHERE id = 1", g=audit.GENESIS)
    history.unlink()
    out = cli_run("audit", "verify", ok=False).output
    assert "audit history is empty" in out


@pytest.mark.parametrize("damage", ["remove", "empty"])
def test_a_replayed_state_row_and_a_lost_head_file_fail_verify(cli_run, db, config,
                                                                 monkeypatch, history, damage):
    # The attacker kept a copy of an older (correctly signed) state row ...
    old = _state(db)
    append_events(db, config, monkeypatch, days_ago(0), n=3)
    # ... deletes the newer events, puts the old row back and gets rid of the head file.
    drop_audit_triggers(db)
    sql(db, "DELETE FROM audit_events WHERE seq > :s", s=old[0])
    _restore(db, old)
    if damage == "remove":
        history.unlink()
    else:
        history.write_text("")
    out = cli_run("audit", "verify", ok=False).output
    assert "no head record vouches" in out


def test_a_head_file_cut_back_below_the_signed_anchor_fails_verify(cli_run, db, config,
                                                                    monkeypatch, history):
    lines = history.read_text().splitlines()
    append_events(db, config, monkeypatch, days_ago(0), n=2)
    cli_run("audit", "verify")
    append_events(db, config, monkeypatch, days_ago(0), n=1)  # signs what the file holds
    history.write_text("\n".join(lines) + "\n")  # rolled back to before the last verify
    out = cli_run("audit", "verify", ok=False).output
    assert "head file was cut back" in out


def test_sqlite_insert_or_replace_bypass_is_refused_and_detected(db, config, monkeypatch,
                                                                  history, backend):
    # 3. in the issue: raise the checkpoint, swap recent events for backdated copies, delete.
    if backend == "sqlite":
        with pytest.raises(DBAPIError, match="append-only"):
            sql(db, "INSERT OR REPLACE INTO audit_events SELECT seq, event_id, "
                    "'2000-01-01 00:00:00.000000', actor, action, target_type, target_id, "
                    "details, prev_hash, hash FROM audit_events WHERE seq = 2")
    else:
        with pytest.raises(DBAPIError, match="append-only"):
            sql(db, "INSERT INTO audit_events SELECT seq + 100, substr(event_id, 2) || 'x', "
                    "created_at, actor, action, target_type, target_id, details, prev_hash, "
                    "hash FROM audit_events WHERE seq = 2")
    before = _state(db)
    sql(db, "UPDATE audit_state SET checkpoint_seq = 7 WHERE id = 1")  # forward: allowed
    with pytest.raises(DBAPIError):
        _restore(db, before)  # ... but never back
    # With the triggers gone, a state changed by hand no longer verifies (and isn't extended).
    drop_audit_triggers(db)
    _restore(db, before)
    sql(db, "UPDATE audit_state SET checkpoint_seq = 7 WHERE id = 1")
    with db.read_transaction() as s:
        assert "audit state was changed" in audit.verify(s, config.audit_hmac_key()).problem
    with pytest.raises(audit.AuditStateTampered), db.transaction() as s:
        audit.record(s, config.audit_hmac_key(), audit.SYSTEM, audit.Action.POLICY_CHANGED)


def test_a_missing_audit_key_is_never_regenerated(cli_run, config, history):
    key_file = config.data_dir / "audit-hmac.key"
    key_file.unlink()
    out = cli_run("audit", "verify", ok=False).output
    assert str(key_file) in out and "never generates a new one" in out
    assert not key_file.exists()
    with pytest.raises(ConfigError, match="audit key file"):
        Database.from_config(type(config)(raw=config.raw, path=None, data_dir=config.data_dir,
                                          database_url=config.database_url))


def test_every_purge_anchors_and_verify_still_passes(cli_run, db, config, monkeypatch):
    append_events(db, config, monkeypatch, days_ago(100), n=3)
    cli_run("init")
    report = retention.run_retention(db, config)
    assert report.head_problem is None
    cli_run("audit", "verify")


def test_init_signs_a_state_from_before_signing_once_its_chain_verifies(cli_run, db, history):
    # What an install upgraded to migration 0007 looks like: events, an unsigned state row.
    drop_audit_triggers(db)
    sql(db, "UPDATE audit_state SET state_sig = NULL, anchored_seq = 0 WHERE id = 1")
    assert "not signed" in cli_run("audit", "verify", ok=False).output
    assert "audit state signed: 7 events verified" in cli_run("init").output
    assert "audit chain intact: 7 events" in cli_run("audit", "verify").output
    # A chain that doesn't verify is not adopted.
    sql(db, "UPDATE audit_state SET state_sig = NULL WHERE id = 1")
    sql(db, "DELETE FROM audit_events WHERE seq = 3")
    out = cli_run("init").output
    assert "audit state signed" not in out
    assert "not signed" in cli_run("audit", "verify", ok=False).output

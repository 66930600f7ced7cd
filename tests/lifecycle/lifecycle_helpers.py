"""Helpers for the privacy-lifecycle tests: time travel, raw SQL, an SMTP inbox."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from control.core import audit, records
from control.core.audit import Action, Actor
from control.core.base import utcnow

TESTER = Actor("test", "lifecycle")
ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def _root_conftest() -> Any:
    """tests/conftest.py (its module name clashes with this folder's conftest)."""
    for mod in list(sys.modules.values()):
        if getattr(mod, "__file__", None) == str(ROOT_CONFTEST):
            return mod
    spec = importlib.util.spec_from_file_location("hushgate_tests_conftest", ROOT_CONFTEST)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_config = _root_conftest().make_config


def days_ago(days: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(days=days)


@contextmanager
def clock_at(monkeypatch: pytest.MonkeyPatch, when: datetime) -> Iterator[None]:
    """Make the audit chain stamp events at ``when`` (the only way to get an old event:
    the database refuses to UPDATE one)."""
    with monkeypatch.context() as m:
        m.setattr(audit, "utcnow", lambda: when)
        yield


def append_events(db, config, monkeypatch, when: datetime, n: int = 1,
                  action: Action = Action.POLICY_CHANGED) -> list[int]:
    """Append ``n`` chained audit events dated ``when``; returns their seqs."""
    seqs = []
    with clock_at(monkeypatch, when), db.transaction() as s:
        for i in range(n):
            seqs.append(audit.record(s, config.audit_hmac_key(), TESTER, action, "test",
                                     None, i=i).seq)
    return seqs


_n = 0


def record_dict(account_id: str | None, when: datetime, **extra: Any) -> dict[str, Any]:
    global _n
    _n += 1
    base = {"time": when, "request_id": f"req_{_n:08d}_{int(when.timestamp())}",
            "account_id": account_id, "key_id": None, "endpoint": "chat.completions",
            "method": "POST", "provider": "simulator", "model": "sim-gpt", "stream": False,
            "status": 200, "error_type": None, "input_tokens": 10, "output_tokens": 5,
            "cached_tokens": 0, "estimated": False, "cost": 7, "latency_ms": 12,
            "ttfb_ms": 3, "upstream_ms": 9, "request_bytes": 100, "response_bytes": 200,
            "client_ip": None, "user_agent": None}
    base.update(extra)
    return base


def add_records(db, account_id: str | None, times: list[datetime], **extra: Any) -> None:
    with db.transaction() as s:
        records.insert_records(s, [record_dict(account_id, t, **extra) for t in times])


def sql(db, statement: str, **params: Any) -> Any:
    """Run one statement in its own committed transaction (like a person at a SQL prompt)."""
    with db.engine.connect() as conn:
        result = conn.execute(text(statement), params)
        rows = result.fetchall() if result.returns_rows else result.rowcount
        conn.commit()
    return rows


def drop_audit_triggers(db) -> None:
    """What a superuser / the file owner can do: remove the database's protection."""
    with db.engine.connect() as conn:
        if db.dialect == "sqlite":
            for name in ("audit_events_no_update", "audit_events_guard_delete",
                         "audit_events_guard_insert", "audit_state_guard_update",
                         "audit_state_no_delete"):
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
        else:
            conn.exec_driver_sql("DROP TRIGGER audit_events_guard ON audit_events")
            conn.exec_driver_sql("DROP TRIGGER audit_events_guard_insert ON audit_events")
            conn.exec_driver_sql("DROP TRIGGER audit_state_guard ON audit_state")
        conn.commit()


Inbox = _root_conftest().Inbox


def as_json(result: Any) -> Any:
    return json.loads(result.output)

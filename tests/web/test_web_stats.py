"""Dashboard aggregations: buckets, per-model rows, histogram percentiles, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control.core import records, stats


def _rec(i: int, when: datetime, *, model: str = "sim-gpt", status: int = 200,
         latency: int = 100, account: str | None = None) -> dict:
    return {"time": when.isoformat(), "request_id": f"r{i}", "account_id": account,
            "key_id": None, "endpoint": "chat.completions", "method": "POST",
            "provider": "simulator", "model": model, "stream": False, "status": status,
            "error_type": None, "input_tokens": 10, "output_tokens": 5, "cached_tokens": 1,
            "estimated": False, "cost": 7, "latency_ms": latency, "ttfb_ms": None,
            "upstream_ms": None, "request_bytes": 1, "response_bytes": 1, "client_ip": None,
            "user_agent": None}


def test_dashboard_buckets_models_and_errors(db):
    now = datetime(2026, 5, 5, 12, 30, tzinfo=UTC)
    rows = [_rec(0, now - timedelta(minutes=5)),
            _rec(1, now - timedelta(hours=2, minutes=1), model="sim-claude", status=500),
            _rec(2, now - timedelta(hours=2, minutes=2), account="acct1"),
            _rec(3, now - timedelta(hours=30)),  # outside 24h
            _rec(4, now + timedelta(hours=7))]  # past the last bucket: outside
    with db.transaction() as s:
        records.insert_records(s, rows)
    with db.read_transaction() as s:
        d = stats.dashboard(s, window="24h", now=now)
        one = stats.dashboard(s, window="24h", now=now, account_id="acct1")
        week = stats.dashboard(s, window="7d", now=now)
    assert d.total.requests == 3 and d.total.errors == 1
    assert d.total.tokens == 45 and d.total.cost == 21 and d.total.cached_tokens == 3
    assert len(d.series) == 24 and d.end == datetime(2026, 5, 5, 13, tzinfo=UTC)
    assert d.series[-1][1].requests == 1 and d.series[-3][1].requests == 2
    assert [m for m, _ in d.models] == ["sim-gpt", "sim-claude"]
    assert dict(d.models)["sim-claude"].error_rate == 1.0
    assert one.total.requests == 1
    assert week.total.requests == 4 and len(week.series) == 28
    out = d.as_dict()
    assert out["total"]["requests"] == 3 and out["models"][0]["model"] == "sim-gpt"


def test_bad_window_is_refused(db):
    from control.core.errors import ValidationError

    with db.read_transaction() as s, pytest.raises(ValidationError):
        stats.dashboard(s, window="1y")


@pytest.mark.parametrize(("latencies", "p50", "p95"), [
    ([], None, None),
    ([100] * 10, 125, 148),
    (list(range(0, 1000, 10)), 500, 950),
    ([100_000], 60_000, 60_000),
])
def test_histogram_percentiles(latencies, p50, p95):
    agg = stats.Aggregate()
    for v in latencies:
        b = next((i for i, e in enumerate(stats.LATENCY_EDGES) if v < e),
                 len(stats.LATENCY_EDGES))
        agg.latency_bins[b] += 1
    assert agg.percentile(0.5) == p50
    assert agg.percentile(0.95) == p95


def test_recent_records_keyset(db):
    now = datetime.now(UTC)
    with db.transaction() as s:
        records.insert_records(s, [_rec(i, now) for i in range(5)])
    with db.read_transaction() as s:
        first = stats.recent_records(s, limit=3)
        rest = stats.recent_records(s, limit=3, before_id=first[-1].id)
        ids = {r.request_id for r in first + rest}
    assert len(first) == 3 and len(rest) == 2
    assert ids == {f"r{i}" for i in range(5)}

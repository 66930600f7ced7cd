"""Prometheus metrics: values equal the records' sums, labels only from allowlists, the
multi-process mode across real processes, who may scrape, and the control plane's
``/metrics`` through the Flask test client."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from control.core import metrics, records
from control.core.config import Config, load_config
from control.core.models import AuditState

CATALOG = ("gpt-test", "claude-test", "embed-test")
SECRET_KEY = "hg_live_AbCdEfGhIjKl_secretsecretsecretsecret_1a2B3c"


def record(**fields: Any) -> dict[str, Any]:
    """A schema-valid request record (validated here, as the proxy's writer does)."""
    base: dict[str, Any] = {
        "time": "2026-12-01T12:00:00+00:00", "request_id": "req_0123456789abcdef",
        "account_id": "acc_0123456789", "key_id": "AbCdEfGhIjKl", "endpoint":
        "chat.completions", "method": "POST", "provider": "sim-openai", "model": "gpt-test",
        "stream": False, "status": 200, "error_type": None, "input_tokens": 0,
        "output_tokens": 0, "cached_tokens": 0, "estimated": False, "cost": 0,
        "latency_ms": 0, "ttfb_ms": None, "upstream_ms": None, "request_bytes": 10,
        "response_bytes": 10, "client_ip": None, "user_agent": None}
    base.update(fields)
    records.validate_record(base)
    return base


RECORDS = [
    record(model="gpt-test", input_tokens=12, output_tokens=30, cached_tokens=4, cost=73_000,
           latency_ms=180, ttfb_ms=40),
    record(model="gpt-test", stream=True, input_tokens=7, output_tokens=91, cost=190_000,
           latency_ms=2_400, ttfb_ms=15, estimated=True),
    record(model="claude-test", endpoint="messages", provider="sim-anthropic",
           input_tokens=100, output_tokens=5, cached_tokens=50, cost=90_000, latency_ms=95,
           ttfb_ms=90),
    record(model="embed-test", endpoint="embeddings", input_tokens=33, cost=3_300,
           latency_ms=12, ttfb_ms=12),
    record(model="gpt-test", status=402, error_type="insufficient_funds", latency_ms=3),
    record(model=None, provider=None, status=401, error_type="invalid_api_key", latency_ms=1),
    record(model="gpt-test", stream=True, status=499, error_type="client_disconnected",
           input_tokens=9, output_tokens=3, cost=15_000, estimated=True, latency_ms=700,
           ttfb_ms=20),
    record(model="claude-test", endpoint="messages", status=504, error_type="upstream_timeout",
           latency_ms=5_000),
]


def scrape(pm: metrics.ProxyMetrics) -> metrics.Samples:
    body, content_type = pm.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return metrics.parse(body)


def test_values_equal_the_records_sums() -> None:
    pm = metrics.ProxyMetrics(CATALOG, currency="EUR")
    for r in RECORDS:
        pm.request_finished(r)
    s = scrape(pm)

    by_labels = Counter((r["endpoint"], r["model"] or "none", str(r["status"]),
                         r["error_type"] or "none") for r in RECORDS)
    for (endpoint, model, status, error), n in by_labels.items():
        assert s.get("hushgate_proxy_requests_total", endpoint=endpoint, model=model,
                     status=status, error_type=error) == n
    assert s.get("hushgate_proxy_requests_total") == len(RECORDS)

    for model in CATALOG:
        mine = [r for r in RECORDS if r["model"] == model]
        for kind in metrics.TOKEN_KINDS:
            assert s.get("hushgate_proxy_tokens_total", model=model, kind=kind) == \
                sum(r[f"{kind}_tokens"] for r in mine)
        assert s.get("hushgate_proxy_cost_minor_units_total", model=model,
                     currency="EUR") == sum(r["cost"] for r in mine)
        assert s.get("hushgate_proxy_estimated_requests_total", model=model) == \
            sum(1 for r in mine if r["estimated"])
        for stream in (False, True):
            sub = [r for r in mine if r["stream"] is stream]
            label = str(stream).lower()
            assert s.get("hushgate_proxy_request_duration_seconds_count", model=model,
                         stream=label) == len(sub)
            assert s.get("hushgate_proxy_request_duration_seconds_sum", model=model,
                         stream=label) == pytest.approx(sum(r["latency_ms"] for r in sub) / 1000)
            timed = [r for r in sub if r["ttfb_ms"] is not None]
            assert s.get("hushgate_proxy_time_to_first_byte_seconds_count", model=model,
                         stream=label) == len(timed)
    assert s.get("hushgate_proxy_cost_minor_units_total") == sum(r["cost"] for r in RECORDS)
    # buckets are cumulative: the 2.4 s stream is above 1 s, everything is below +Inf
    assert s.get("hushgate_proxy_request_duration_seconds_bucket", le="1.0") == \
        sum(1 for r in RECORDS if r["latency_ms"] <= 1000)
    assert s.get("hushgate_proxy_request_duration_seconds_bucket", le="+Inf") == len(RECORDS)


def test_state_gauges_and_error_counters() -> None:
    pm = metrics.ProxyMetrics(CATALOG)
    pm.holds_in_flight(7)
    pm.writer_queue(42, 0.35)
    for _ in range(3):
        pm.db_error()
    pm.redis_error()
    pm.revocation_seen(0.8)
    pm.revocation_seen(1.7)
    pm.holds_in_flight(5)  # a gauge: the last value counts
    s = scrape(pm)
    assert s.get("hushgate_proxy_holds_in_flight") == 5
    assert s.get("hushgate_proxy_writer_queue_depth") == 42
    assert s.get("hushgate_proxy_writer_lag_seconds") == pytest.approx(0.35)
    assert s.get("hushgate_proxy_db_errors_total") == 3
    assert s.get("hushgate_proxy_redis_errors_total") == 1
    assert s.get("hushgate_proxy_revocation_propagation_seconds_count") == 2
    assert s.get("hushgate_proxy_revocation_propagation_seconds_bucket", le="1.0") == 1
    assert s.get("hushgate_proxy_revocation_propagation_seconds_bucket", le="2.0") == 2
    assert s.get("process_resident_memory_bytes") > 0


HOSTILE = [
    # client-chosen values that must never become labels
    {"model": "sk-live-EXFILTRATE-0001"},
    {"model": "gpt-test\"} evil{x=\"1"},
    {"endpoint": "/v1/../admin?key=" + SECRET_KEY},
    {"error_type": "Bearer " + SECRET_KEY},
    {"status": 999},
    {"status": True},
    {"input_tokens": -5, "cost": "1000000", "latency_ms": "slow", "ttfb_ms": -1},
    {"account_id": "acc_SECRETACCOUNT", "key_id": "KEYIDSECRET1",
     "request_id": "req_SECRETREQUEST", "client_ip": "203.0.113.9"},
]


@pytest.mark.parametrize("fields", HOSTILE, ids=lambda f: ",".join(f))
def test_hostile_values_never_reach_the_output(fields: dict[str, Any]) -> None:
    pm = metrics.ProxyMetrics(CATALOG)
    # not schema-validated: the Gateway must not be able to leak even a malformed record
    pm.request_finished({**record(), **fields})
    text = pm.render()[0].decode()
    for value in fields.values():
        if isinstance(value, str) and len(value) > 3:
            assert value not in text
    for leak in ("EXFILTRATE", "evil", SECRET_KEY, "SECRET", "203.0.113", "admin"):
        assert leak not in text
    s = metrics.parse(text)
    assert s.get("hushgate_proxy_requests_total") == 1
    assert s.label_values("hushgate_proxy_requests_total", "model") <= {*CATALOG, "other",
                                                                        "none"}
    assert s.label_values("hushgate_proxy_requests_total", "endpoint") <= metrics.ENDPOINTS
    assert s.label_values("hushgate_proxy_requests_total", "error_type") <= \
        metrics.ERROR_TYPES
    assert s.get("hushgate_proxy_tokens_total") >= 0
    labels = {k for _, lab, _ in s.samples for k in lab}
    assert labels <= {"endpoint", "model", "status", "error_type", "kind", "currency",
                      "stream", "le"}


def test_label_functions_are_allowlists() -> None:
    catalog = frozenset(CATALOG)
    assert metrics.model_label("gpt-test", catalog) == "gpt-test"
    assert metrics.model_label("GPT-TEST", catalog) == "other"
    assert metrics.model_label(None, catalog) == "none"
    assert metrics.endpoint_label("messages") == "messages"
    assert metrics.endpoint_label("chat/completions") == "other"
    assert metrics.status_label(404) == "404"
    assert metrics.status_label(0) == "none"
    assert metrics.error_label("rate_limited") == "rate_limited"
    assert metrics.error_label("rate_limited2") == "other"


# -- several processes ----------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from control.core import metrics
    metrics.enable_multiprocess(Path(sys.argv[1]))
    pm = metrics.ProxyMetrics(["gpt-test"])
    for r in json.loads(sys.argv[2]):
        pm.request_finished(r)
    pm.holds_in_flight(int(sys.argv[3]))
    pm.db_error()
    print("ready", flush=True)
    sys.stdin.read()  # stay alive (its live gauges count) until the test closes stdin
""")


def test_multiprocess_sums_every_process(tmp_path: Path) -> None:
    import json

    folder = tmp_path / "prom"
    folder.mkdir(mode=0o755)
    stale = folder / "counter_999999999.db"  # a process that is long gone
    stale.write_bytes(b"\0" * 64)
    halves = [RECORDS[:4], RECORDS[4:]]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(folder), json.dumps(h),
                               str(holds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
             for h, holds in zip(halves, (3, 4), strict=True)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        assert not stale.exists()
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        # the reader is a third process (the control plane, or another worker)
        code = ("import sys; from control.core import metrics; from pathlib import Path;"
                "metrics.enable_multiprocess(Path(sys.argv[1]));"
                "sys.stdout.write(metrics.ProxyMetrics([]).render()[0].decode())")
        text = subprocess.run([sys.executable, "-c", code, str(folder)], check=True,
                              capture_output=True, text=True).stdout
        s = metrics.parse(text)
        assert s.get("hushgate_proxy_requests_total") == len(RECORDS)
        assert s.get("hushgate_proxy_cost_minor_units_total") == sum(r["cost"] for r in RECORDS)
        assert s.get("hushgate_proxy_tokens_total", model="gpt-test", kind="output") == \
            sum(r["output_tokens"] for r in RECORDS if r["model"] == "gpt-test")
        assert s.get("hushgate_proxy_db_errors_total") == 2
        assert s.get("hushgate_proxy_holds_in_flight") == 7
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(10)
            p.stdout.close()


# -- who may scrape -------------------------------------------------------------------------


def _config(tmp_path: Path, **section: Any) -> Config:
    return load_config(overrides={"data_dir": str(tmp_path / "data"), "metrics": section})


@pytest.mark.parametrize("peer,headers,section,env,allowed", [
    ("127.0.0.1", {}, {}, None, True),
    ("::1", {}, {}, None, True),
    ("10.1.2.3", {}, {}, None, False),
    ("127.0.0.1", {"X-Forwarded-For": "198.51.100.7"}, {}, None, False),
    ("127.0.0.1", {"Forwarded": "for=198.51.100.7"}, {}, None, False),
    ("10.1.2.3", {"Authorization": "Bearer tok-123456"}, {}, "tok-123456", True),
    ("10.1.2.3", {"Authorization": "bearer tok-123456"}, {}, "tok-123456", True),
    ("10.1.2.3", {"Authorization": "Bearer tok-12345"}, {}, "tok-123456", False),
    ("10.1.2.3", {"Authorization": "Basic tok-123456"}, {}, "tok-123456", False),
    ("127.0.0.1", {}, {"loopback_without_token": False}, None, False),
    ("127.0.0.1", {"Authorization": "Bearer tok-123456"},
     {"loopback_without_token": False}, "tok-123456", True),
    ("127.0.0.1", {}, {"enabled": False}, None, False),
])
def test_scrape_allowed(tmp_path, monkeypatch, peer, headers, section, env, allowed) -> None:
    if env:
        monkeypatch.setenv("HUSHGATE_METRICS_TOKEN", env)
    else:
        monkeypatch.delenv("HUSHGATE_METRICS_TOKEN", raising=False)
    assert metrics.scrape_allowed(_config(tmp_path, **section), peer, headers) is allowed


def test_token_file(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HUSHGATE_METRICS_TOKEN", raising=False)
    token = tmp_path / "metrics.token"
    token.write_text("from-a-file-0001\n")
    cfg = _config(tmp_path, token_file=str(token))
    assert metrics.scrape_allowed(cfg, "10.0.0.1", {"Authorization": "Bearer from-a-file-0001"})
    assert not metrics.scrape_allowed(cfg, "10.0.0.1", {"Authorization": "Bearer x"})


# -- the control plane's /metrics -----------------------------------------------------------


@pytest.fixture
def control_client(config, db):
    from control.web import create_app

    return create_app(config, db, TESTING=True).test_client()


def test_control_plane_metrics(control_client, funded_account, uow, db, config,
                               monkeypatch) -> None:
    from control.core import accounts, keys

    monkeypatch.setenv("HUSHGATE_METRICS_TOKEN", "scrape-token-000111")
    with uow() as ctx:
        keys.create_key(ctx, funded_account)
        other = accounts.create_account(ctx, name="Bob", email="bob@example.com",
                                        adult_attested=True)
        accounts.set_account_status(ctx, other.id, "disabled")
    assert control_client.get("/healthz").status_code == 200
    assert control_client.get("/healthz").status_code == 200
    assert control_client.get("/no-such-page").status_code == 404

    resp = control_client.get("/metrics")
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/plain; version=0.0.4")
    s = metrics.parse(resp.get_data(as_text=True))
    with db.read_transaction() as session:
        agg = metrics.control_plane_aggregates(session)
        chain = session.get(AuditState, 1).last_seq
    assert s.get("hushgate_control_database_up") == 1
    assert s.get("hushgate_accounts") == 2
    assert s.get("hushgate_accounts", status="active") == agg["accounts"]["active"] == 1
    assert s.get("hushgate_accounts", status="disabled") == 1
    assert s.get("hushgate_api_keys", status="active") == 1
    assert s.get("hushgate_wallet_balance_minor_units", currency="USD") == 10_000_000
    assert s.get("hushgate_wallet_held_minor_units") == 0
    assert s.get("hushgate_audit_events") == chain > 0
    assert s.get("hushgate_control_requests_total", blueprint="public", status="200") == 2
    assert s.get("hushgate_control_requests_total", blueprint="none", status="404") == 1
    assert s.get("hushgate_control_request_duration_seconds_count", blueprint="public") == 2
    text = resp.get_data(as_text=True)
    for private in ("Ada", "ada@example.com", "bob@example.com", funded_account, "no-such-page"):
        assert private not in text

    # not loopback: the token, or a 403 that says how
    remote = {"REMOTE_ADDR": "192.0.2.10"}
    refused = control_client.get("/metrics", environ_base=remote)
    assert refused.status_code == 403
    assert "metrics.token_env" in refused.get_data(as_text=True)
    assert control_client.get("/metrics", environ_base=remote, headers={
        "Authorization": "Bearer scrape-token-000111"}).status_code == 200
    # forwarded by a terminator on this host: not loopback any more
    assert control_client.get("/metrics", headers={"X-Forwarded-For": "192.0.2.10"}
                              ).status_code == 403


def test_control_plane_metrics_disabled(config_factory, db_url) -> None:
    from control.core.db import Database
    from control.web import create_app

    cfg = config_factory(db_url, metrics={"enabled": False})
    database = Database.from_config(cfg)
    try:
        client = create_app(cfg, database, TESTING=True).test_client()
        assert client.get("/metrics").status_code == 404
        assert client.get("/healthz").status_code == 200
    finally:
        database.dispose()


def test_control_plane_includes_the_proxies_on_this_host(config_factory, db_url) -> None:
    """With metrics.multiprocess_dir, the control plane also serves what the proxy
    processes on this host wrote there (a real worker process writes them)."""
    import json

    from control.core.db import Database
    from control.web import create_app

    cfg = config_factory(db_url, metrics={"multiprocess_dir": "prom"})
    folder = metrics.multiprocess_dir(cfg)
    assert folder == cfg.data_dir / "prom"
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(folder),
                               json.dumps(RECORDS), "2"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    database = Database.from_config(cfg)
    try:
        assert worker.stdout.readline().strip() == "ready"
        client = create_app(cfg, database, TESTING=True).test_client()
        s = metrics.parse(client.get("/metrics").get_data(as_text=True))
        assert s.get("hushgate_proxy_requests_total") == len(RECORDS)
        assert s.get("hushgate_proxy_holds_in_flight") == 2
        assert s.get("hushgate_control_database_up") == 1
    finally:
        worker.stdin.close()
        worker.wait(10)
        worker.stdout.close()
        database.dispose()
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # this process stayed single

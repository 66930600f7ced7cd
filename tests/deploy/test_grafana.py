"""The shipped Grafana dashboard queries only metrics that hushgate really exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from control.core import metrics
from control.web import create_app

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "hushgate.json"
PROMQL_WORDS = {"sum", "by", "rate", "max", "min", "histogram_quantile", "le", "model", "kind",
                "status", "error_type", "currency", "stream", "blueprint", "true", "none",
                "queued"}
SUFFIXES = ("_bucket", "_count", "_sum")


def exposed_names(config, db) -> set[str]:
    pm = metrics.ProxyMetrics(["m"])
    pm.request_finished({"endpoint": "chat.completions", "model": "m", "status": 200,
                         "stream": True, "input_tokens": 1, "output_tokens": 1,
                         "cached_tokens": 1, "cost": 1, "estimated": True, "latency_ms": 1,
                         "ttfb_ms": 1})
    pm.holds_in_flight(1)
    pm.writer_queue(1, 0.1)
    pm.db_error()
    pm.redis_error()
    pm.revocation_seen(0.1)
    names = metrics.parse(pm.render()[0]).names()
    # the control plane's own: a real app on a real database, after one request
    app = create_app(config, db, TESTING=True)
    client = app.test_client()
    client.get("/healthz")
    names |= metrics.parse(client.get("/metrics").get_data(as_text=True)).names()
    return names


def test_dashboard_is_valid_and_queries_exposed_metrics(config, db) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "hushgate" and dash["panels"]
    exposed = exposed_names(config, db)
    used = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = re.sub(r'"[^"]*"', '""', target["expr"])  # label values aside
            expr = expr.replace("$__rate_interval", "")
            for word in re.findall(r"[a-z_][a-z0-9_]*", expr):
                if word not in PROMQL_WORDS:
                    used.add(word)
    assert used, "no metric found in the dashboard"
    missing = used - exposed
    assert not missing, f"the dashboard queries metrics nobody exposes: {sorted(missing)}"
    # and every proxy metric of interest has a panel
    for name in ("hushgate_proxy_requests_total", "hushgate_proxy_tokens_total",
                 "hushgate_proxy_cost_minor_units_total",
                 "hushgate_proxy_request_duration_seconds_bucket",
                 "hushgate_proxy_time_to_first_byte_seconds_bucket",
                 "hushgate_proxy_holds_in_flight", "hushgate_proxy_writer_queue_depth",
                 "hushgate_proxy_writer_lag_seconds", "hushgate_proxy_db_errors_total",
                 "hushgate_proxy_redis_errors_total",
                 "hushgate_proxy_revocation_propagation_seconds_bucket"):
        assert name in used, name

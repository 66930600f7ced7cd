"""``/metrics`` on the control plane (Prometheus text format).

What it shows: requests by blueprint and status and their duration, and the aggregates of
:class:`control.core.metrics.ControlPlaneCollector` (accounts and keys by status, wallet
totals, audit chain length, notification backlog). With ``metrics.multiprocess_dir`` set, the
proxy processes' metrics on this host are included too. Who may scrape is
:func:`control.core.metrics.scrape_allowed` (loopback, or the bearer token); anyone else
gets 403 saying how to get in. With ``metrics.enabled: false`` it is 404.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from control.core import metrics as core_metrics
from control.web.ext import hg

bp = Blueprint("metrics", __name__)

_KEY = "hushgate.metrics"
#: Page timings up to slow exports.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ControlMetrics:
    """One app's registry: its own request metrics and the database aggregates."""

    def __init__(self, app: Flask) -> None:
        ext = app.extensions["hushgate"]
        self.config = ext.config
        self.registry = CollectorRegistry()
        self.requests = Counter("hushgate_control_requests", "Control-plane requests.",
                                ["blueprint", "status"], registry=self.registry)
        self.duration = Histogram("hushgate_control_request_duration_seconds",
                                  "Control-plane request duration.", ["blueprint"],
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.registry.register(core_metrics.ControlPlaneCollector(
            ext.reader, self.config.wallet["currency"]))
        self.proxy_dir: Path | None = core_metrics.multiprocess_dir(self.config)

    def render(self) -> bytes:
        if core_metrics.multiprocess_active():
            # This process's own counters live in the shared files too: render those (with
            # the proxies') and the live aggregates, each once.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(core_metrics.ControlPlaneCollector(
                hg().reader, self.config.wallet["currency"]))
            return generate_latest(registry)
        body = generate_latest(self.registry)
        if self.proxy_dir is not None and self.proxy_dir.is_dir():
            proxies = CollectorRegistry()
            multiprocess.MultiProcessCollector(proxies, path=str(self.proxy_dir))
            body += generate_latest(proxies)
        return body


def _metrics() -> ControlMetrics | None:
    return current_app.extensions.get(_KEY)


@bp.record_once
def _setup(state: Any) -> None:
    app = state.app
    if (app.extensions["hushgate"].config.raw.get("metrics") or {}).get("enabled", True):
        app.extensions[_KEY] = ControlMetrics(app)


@bp.before_app_request
def _start_timer() -> None:
    g.hushgate_started = time.perf_counter()


@bp.after_app_request
def _count(response: Response) -> Response:
    m = _metrics()
    started = g.get("hushgate_started")
    if m is not None and started is not None:
        # The blueprint name is one of the app's own (or "none" for app-level routes):
        # never the path, which a client chooses.
        blueprint = request.blueprint or "none"
        m.requests.labels(blueprint, str(response.status_code)).inc()
        m.duration.labels(blueprint).observe(time.perf_counter() - started)
    return response


@bp.get("/metrics")
def metrics() -> Response:
    m = _metrics()
    if m is None:
        abort(404)  # metrics.enabled is false
    if not core_metrics.scrape_allowed(m.config, request.remote_addr, request.headers):
        return Response(core_metrics.REFUSED + "\n", status=403, mimetype="text/plain")
    response = Response(m.render(), mimetype=None, content_type=core_metrics.CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    return response

"""Prometheus metrics, content-free by construction.

Every label value comes from an allowlist fixed here or by the configuration: the endpoint
from hushgate's fixed endpoint list, the model only if it is a catalog model (else
``other``), the status as its number, the error type from hushgate's own error codes (else
``other``). Nothing a client chooses beyond a catalog model name, and no key id, account id,
request id, header or body ever becomes a label or a value.

Two registries:

- :class:`ProxyMetrics`, fed by the proxy's Gateway (one call per finished request and a few
  for its internal state). ``render()`` is what the proxy's ``/metrics`` serves.
- :class:`ControlPlaneCollector`, the control plane's aggregates (accounts, keys, wallet
  totals, audit chain length, notification backlog), computed from the database at scrape
  time.

Several proxy processes on one host (worker processes behind one port) share their metrics
through prometheus-client's multi-process mode: each process writes memory-mapped files in
``metrics.multiprocess_dir`` and any of them (or the control plane on the same host) renders
the sum. :func:`enable_multiprocess` switches a process into that mode; it must be called
before the process creates its metrics.

Who may scrape is decided once, by :func:`scrape_allowed`, for both front ends.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.core.config import ENDPOINTS_BY_FORMAT, Config
from control.core.errors import ConfigError
from control.core.net import is_loopback

#: The endpoint label: hushgate's fixed endpoint names (anything else is ``other``).
ENDPOINTS = frozenset(
    {e for names in ENDPOINTS_BY_FORMAT.values() for e in names} | {"models", "other"})

#: The error_type label: hushgate's own error codes (anything else is ``other``; no error is
#: ``none``). A new code shows as ``other`` until it is added here.
ERROR_TYPES = frozenset({
    "none", "other",
    # intake and parsing
    "invalid_header", "tls_required", "unknown_endpoint", "key_in_query",
    "method_not_allowed", "invalid_request", "request_too_large", "invalid_content_type",
    "invalid_json", "invalid_encoding", "missing_model", "model_not_found",
    "model_not_allowed",
    # keys, limits, money
    "missing_api_key", "invalid_api_key", "key_expired", "key_revoked", "account_inactive",
    "rate_limited", "insufficient_funds", "budget_exceeded",
    # hushgate and the provider
    "service_unavailable", "internal_error", "not_authorized_by_pipeline",
    "provider_unconfigured", "upstream_timeout", "upstream_unreachable", "upstream_cut",
    "upstream_error", "response_too_large", "client_disconnected", "proxy_error",
})

#: Seconds. From a millisecond answer to a 20-minute stream.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0, 1200.0)
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0)
#: Revocation must reach every proxy within 2 s.
REVOCATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)

TOKEN_KINDS = ("input", "output", "cached")

#: The classic text format ``generate_latest`` writes, which every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def model_label(model: Any, catalog: frozenset[str]) -> str:
    if model is None or model == "":
        return "none"
    return model if isinstance(model, str) and model in catalog else "other"


def endpoint_label(endpoint: Any) -> str:
    return endpoint if isinstance(endpoint, str) and endpoint in ENDPOINTS else "other"


def status_label(status: Any) -> str:
    """The HTTP status code (bounded: 100-599), ``none`` when no answer was sent."""
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return str(status)
    return "none"


def error_label(error_type: Any) -> str:
    if error_type is None or error_type == "":
        return "none"
    return error_type if isinstance(error_type, str) and error_type in ERROR_TYPES else "other"


def _count(value: Any) -> int:
    """A non-negative integer from a record field (anything else counts as 0)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


# -- multi-process mode ---------------------------------------------------------------------


def multiprocess_dir(config: Config) -> Path | None:
    """``metrics.multiprocess_dir`` resolved against the data folder, or None (off)."""
    raw = (config.raw.get("metrics") or {}).get("multiprocess_dir")
    if not raw:
        return None
    path = Path(raw)
    return path if path.is_absolute() else config.data_dir / path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def enable_multiprocess(path: Path) -> None:
    """Put this process into prometheus-client's multi-process mode, writing to ``path``.

    The folder is created 0700. Files left by processes that are no longer running, and by
    an earlier process that had this process's id (a restarted container is pid 1 again),
    are removed first, so a restart starts its counters at zero instead of inheriting them.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    me = os.getpid()
    for f in path.glob("*.db"):
        try:
            pid = int(f.stem.rpartition("_")[2])
        except ValueError:
            continue
        if pid == me or not _pid_alive(pid):
            f.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    # prometheus-client picks the value class when it is imported; pick it again now.
    values.ValueClass = values.get_value_class()


def multiprocess_active() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def process_exited(pid: int) -> None:
    """Drop a finished worker's live gauges (holds in flight, queue depth) from the sums."""
    if multiprocess_active():
        multiprocess.mark_process_dead(pid)


# -- the proxy ------------------------------------------------------------------------------


class ProxyMetrics:
    """The proxy's metrics. The Gateway calls the methods below; ``render()`` serves them.

    ``models`` is the catalog: only those names appear as the model label.
    """

    def __init__(self, models: Iterable[str], *, currency: str = "USD") -> None:
        self._catalog = frozenset(models)
        self._multiprocess = multiprocess_active()
        self._dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") if self._multiprocess else None
        reg = self.registry = CollectorRegistry()
        self._requests = Counter(
            "hushgate_proxy_requests", "Finished proxy requests.",
            ["endpoint", "model", "status", "error_type"], registry=reg)
        self._tokens = Counter(
            "hushgate_proxy_tokens", "Tokens billed, by model and kind (input, output, "
            "cached input).", ["model", "kind"], registry=reg)
        self._cost = Counter(
            "hushgate_proxy_cost_minor_units", "Cost charged, in minor units of the "
            "currency (wallet.minor_unit_scale per unit).", ["model", "currency"],
            registry=reg)
        self._currency = currency
        self._estimated = Counter(
            "hushgate_proxy_estimated_requests", "Requests charged by estimate (the "
            "provider reported no usage).", ["model"], registry=reg)
        self._latency = Histogram(
            "hushgate_proxy_request_duration_seconds", "Time from the request's arrival to "
            "its last byte.", ["model", "stream"], buckets=LATENCY_BUCKETS, registry=reg)
        self._ttfb = Histogram(
            "hushgate_proxy_time_to_first_byte_seconds", "Time from the request's arrival to "
            "the first byte of the answer.", ["model", "stream"], buckets=TTFB_BUCKETS,
            registry=reg)
        self._holds = Gauge(
            "hushgate_proxy_holds_in_flight", "Wallet holds taken and not yet settled.",
            registry=reg, multiprocess_mode="livesum")
        self._queue_depth = Gauge(
            "hushgate_proxy_writer_queue_depth", "Outcomes waiting for the record writer.",
            registry=reg, multiprocess_mode="livesum")
        self._queue_lag = Gauge(
            "hushgate_proxy_writer_lag_seconds", "Age of the oldest outcome waiting for the "
            "record writer.", registry=reg, multiprocess_mode="livemax")
        self._db_errors = Counter(
            "hushgate_proxy_db_errors", "Database operations that failed.", registry=reg)
        self._redis_errors = Counter(
            "hushgate_proxy_redis_errors", "Redis operations that failed (shared rate "
            "limits fell back to this process).", registry=reg)
        self._revocation = Histogram(
            "hushgate_proxy_revocation_propagation_seconds", "From a key's revocation (or "
            "expiry, or its account's deactivation) to this proxy refusing it.",
            buckets=REVOCATION_BUCKETS, registry=reg)
        if not self._multiprocess:
            ProcessCollector(registry=reg)  # RSS, CPU seconds, open files of this process

    @classmethod
    def from_config(cls, config: Config) -> ProxyMetrics | None:
        """The proxy's metrics for ``config``, or None when ``metrics.enabled`` is false."""
        section = config.raw.get("metrics") or {}
        if not section.get("enabled", True):
            return None
        path = multiprocess_dir(config)
        if path is not None and not multiprocess_active():
            enable_multiprocess(path)
        return cls(config.models, currency=config.wallet["currency"])

    # -- what the Gateway calls -------------------------------------------------------------

    def request_finished(self, record: Mapping[str, Any]) -> None:
        """Count one finished request from its metadata record (request-record schema)."""
        model = model_label(record.get("model"), self._catalog)
        self._requests.labels(endpoint_label(record.get("endpoint")), model,
                              status_label(record.get("status")),
                              error_label(record.get("error_type"))).inc()
        for kind in TOKEN_KINDS:
            n = _count(record.get(f"{kind}_tokens"))
            if n:
                self._tokens.labels(model, kind).inc(n)
        cost = _count(record.get("cost"))
        if cost:
            self._cost.labels(model, self._currency).inc(cost)
        if record.get("estimated") is True:
            self._estimated.labels(model).inc()
        stream = "true" if record.get("stream") is True else "false"
        latency = record.get("latency_ms")
        if isinstance(latency, int | float) and latency >= 0:
            self._latency.labels(model, stream).observe(latency / 1000)
        ttfb = record.get("ttfb_ms")
        if isinstance(ttfb, int | float) and ttfb >= 0:
            self._ttfb.labels(model, stream).observe(ttfb / 1000)

    def holds_in_flight(self, n: int) -> None:
        self._holds.set(max(0, n))

    def writer_queue(self, depth: int, lag_seconds: float) -> None:
        self._queue_depth.set(max(0, depth))
        self._queue_lag.set(max(0.0, lag_seconds))

    def db_error(self) -> None:
        self._db_errors.inc()

    def redis_error(self) -> None:
        self._redis_errors.inc()

    def revocation_seen(self, seconds: float) -> None:
        self._revocation.observe(max(0.0, seconds))

    def render(self) -> tuple[bytes, str]:
        """The exposition text (every proxy process's sum in multi-process mode) and its
        content type."""
        if self._dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self._dir)
            return generate_latest(registry), CONTENT_TYPE
        return generate_latest(self.registry), CONTENT_TYPE


# -- the control plane ----------------------------------------------------------------------


def control_plane_aggregates(session: Session) -> dict[str, Any]:
    """Counts and totals only: accounts and keys by status, wallet totals, audit chain
    length, notifications by status."""
    from control.core.models import Account, ApiKey, AuditState, Notification, Wallet

    def by_status(model: Any, known: tuple[str, ...]) -> dict[str, int]:
        counts = dict.fromkeys(known, 0)  # every status shows, at 0 too
        rows = session.execute(select(model.status, func.count()).group_by(model.status))
        counts.update({str(status): int(n) for status, n in rows})
        return counts

    balance, held = session.execute(
        select(func.coalesce(func.sum(Wallet.balance), 0),
               func.coalesce(func.sum(Wallet.held), 0))).one()
    state = session.get(AuditState, 1)
    return {
        "accounts": by_status(Account, ("active", "disabled", "deleted", "erased")),
        "api_keys": by_status(ApiKey, ("active", "revoked")),
        "notifications": by_status(Notification, ("queued", "sent", "skipped", "failed")),
        "wallet_balance": int(balance),
        "wallet_held": int(held),
        "audit_events": int(state.last_seq) if state else 0,
        "audit_checkpoint": int(state.checkpoint_seq) if state else 0,
    }


class ControlPlaneCollector:
    """A prometheus-client collector reading :func:`control_plane_aggregates` per scrape.

    ``reader`` is a context manager factory yielding a read-only session."""

    def __init__(self, reader: Any, currency: str) -> None:
        self._reader = reader
        self._currency = currency

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only, never at registration

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("hushgate_control_database_up",
                               "1 if the control plane could read its database.")
        try:
            with self._reader() as session:
                agg = control_plane_aggregates(session)
        except Exception:  # noqa: BLE001 - a scrape reports the outage, never its text
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, key, help_text in (
                ("hushgate_accounts", "accounts", "Accounts by status."),
                ("hushgate_api_keys", "api_keys", "API keys by status."),
                ("hushgate_notifications", "notifications", "Notifications by status.")):
            family = GaugeMetricFamily(name, help_text, labels=["status"])
            for status, n in sorted(agg[key].items()):
                family.add_metric([status], n)
            yield family
        for name, key, help_text in (
                ("hushgate_wallet_balance_minor_units", "wallet_balance",
                 "Sum of all wallet balances, in minor units."),
                ("hushgate_wallet_held_minor_units", "wallet_held",
                 "Sum of all open holds, in minor units.")):
            family = GaugeMetricFamily(name, help_text, labels=["currency"])
            family.add_metric([self._currency], agg[key])
            yield family
        yield GaugeMetricFamily("hushgate_audit_events", "Length of the audit chain (events "
                                "ever appended).", value=agg["audit_events"])
        yield GaugeMetricFamily("hushgate_audit_checkpoint_seq", "Sequence number up to which "
                                "retention purged the audit chain.",
                                value=agg["audit_checkpoint"])


# -- who may scrape -------------------------------------------------------------------------

FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
#: The answer to a scrape that may not read the metrics (names no secret, only settings).
REFUSED = ("metrics: send Authorization: Bearer <token> (metrics.token_file or the variable "
           "metrics.token_env names), or scrape from loopback without a forwarding proxy")


def scrape_token(config: Config) -> str | None:
    """The bearer token from ``metrics.token_file`` or ``metrics.token_env``, or None."""
    section = config.raw.get("metrics") or {}
    if section.get("token_file"):
        try:
            token = Path(section["token_file"]).read_text().strip()
        except OSError:
            raise ConfigError("metrics.token_file: cannot read the file") from None
        return token or None
    env = section.get("token_env")
    return (os.environ.get(env) or None) if env else None


def scrape_allowed(config: Config, peer: str | None, headers: Mapping[str, str]) -> bool:
    """Whether a scrape from ``peer`` with ``headers`` may read ``/metrics``.

    With a token configured, a request that presents it (``Authorization: Bearer``) is
    allowed from anywhere. Without it, only a loopback client whose request was not
    forwarded (no ``Forwarded``/``X-Forwarded-For``/``X-Real-IP``: a terminator on the same
    host must not publish the metrics), and only while ``metrics.loopback_without_token``
    is true.
    """
    section = config.raw.get("metrics") or {}
    if not section.get("enabled", True):
        return False
    lower = {k.lower(): v for k, v in headers.items()}
    token = scrape_token(config)
    if token:
        scheme, _, presented = (lower.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(),
                                                              token.encode()):
            return True
    if not section.get("loopback_without_token", True):
        return False
    return is_loopback(peer) and not any(h in lower for h in FORWARDING_HEADERS)


# -- reading an exposition (tests and `hushgate doctor`) --------------------------------------


class Samples:
    """Parsed exposition text: ``get(name, **labels)`` sums the samples of ``name`` whose
    labels include ``labels``."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.append((s.name, dict(s.labels), float(s.value)))

    def get(self, name: str, **labels: str) -> float:
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == want for k, want in labels.items()))

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}

    def label_values(self, name: str, label: str) -> set[str]:
        return {lab[label] for n, lab, _ in self.samples if n == name and label in lab}


def parse(text: str | bytes) -> Samples:
    """Parse Prometheus exposition text into :class:`Samples`."""
    return Samples(text.decode() if isinstance(text, bytes) else text)

"""Dashboard aggregations over ``request_records`` (metadata only).

One indexed range scan per view: the window ``[start, end)`` uses ``ix_request_records_time``
(or ``ix_request_records_account_time`` for one account) and a single GROUP BY on
(time bucket, model, latency bin) returns at most buckets x models x bins rows, from which
the series, the per-model table and the latency percentiles are computed in Python.

Percentiles come from a fixed latency histogram (portable: SQLite has no percentile
function), interpolated inside the bin, so p50/p95 are approximate to within one bin.
Windows are bounded (at most 90 days, the retention default), so the work is bounded too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from control.core.base import utcnow
from control.core.errors import ValidationError
from control.core.models import RequestRecord

#: window name -> (length, bucket size)
WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
    "30d": (timedelta(days=30), timedelta(days=1)),
    "90d": (timedelta(days=90), timedelta(days=3)),
}
DEFAULT_WINDOW = "24h"
#: upper edges (ms) of the latency histogram bins; the last bin is open-ended
LATENCY_EDGES = (10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000,
                 5000, 7500, 10_000, 15_000, 30_000, 60_000)


class epoch_seconds(FunctionElement[int]):  # noqa: N801 - SQL function style
    """Seconds since 1970 of a UTC timestamp column, as an integer, on both backends."""

    type = BigInteger()
    inherit_cache = True


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    return f"CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(epoch_seconds, "postgresql")
def _epoch_pg(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)}) AS BIGINT)"


@dataclass
class Aggregate:
    """Counts of one slice (a time bucket, a model, or everything)."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: int = 0
    latency_bins: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES) + 1))

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def percentile(self, q: float) -> int | None:
        return histogram_percentile(self.latency_bins, q)

    def add(self, row: Any) -> None:
        self.requests += row.n
        self.errors += int(row.errors or 0)
        self.input_tokens += int(row.input_tokens or 0)
        self.output_tokens += int(row.output_tokens or 0)
        self.cached_tokens += int(row.cached_tokens or 0)
        self.cost += int(row.cost or 0)
        self.latency_bins[int(row.latbin)] += row.n

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 4), "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cached_tokens": self.cached_tokens,
                "tokens": self.tokens, "cost": self.cost,
                "latency_p50_ms": self.percentile(0.5), "latency_p95_ms": self.percentile(0.95)}


def histogram_percentile(bins: list[int], q: float) -> int | None:
    """The q-quantile of a histogram over LATENCY_EDGES, interpolated within its bin."""
    total = sum(bins)
    if not total:
        return None
    target = q * total
    seen = 0
    for i, count in enumerate(bins):
        if count and seen + count >= target:
            low = LATENCY_EDGES[i - 1] if i else 0
            if i == len(LATENCY_EDGES):
                return low
            high = LATENCY_EDGES[i]
            return round(low + (high - low) * (target - seen) / count)
        seen += count
    return LATENCY_EDGES[-1]


@dataclass
class Dashboard:
    window: str
    start: datetime
    end: datetime
    bucket_seconds: int
    series: list[tuple[datetime, Aggregate]]
    models: list[tuple[str, Aggregate]]
    total: Aggregate

    def as_dict(self) -> dict[str, Any]:
        return {"window": self.window, "start": self.start.isoformat(),
                "end": self.end.isoformat(), "bucket_seconds": self.bucket_seconds,
                "total": self.total.as_dict(),
                "series": [{"start": t.isoformat(), **a.as_dict()} for t, a in self.series],
                "models": [{"model": m, **a.as_dict()} for m, a in self.models]}


def _latency_bin(col: ColumnElement[int]) -> ColumnElement[int]:
    return case(*[(col < edge, i) for i, edge in enumerate(LATENCY_EDGES)],
                else_=len(LATENCY_EDGES))


def dashboard(session: Session, *, window: str = DEFAULT_WINDOW,
              account_id: str | None = None, now: datetime | None = None) -> Dashboard:
    """Requests, tokens, cost, errors and latency over ``window``, per bucket and per model."""
    if window not in WINDOWS:
        raise ValidationError(f"window must be one of {', '.join(WINDOWS)}", "window")
    length, step = WINDOWS[window]
    step_s = int(step.total_seconds())
    now = now or utcnow()
    # Align the end to the next bucket edge so buckets are stable between page loads.
    end_epoch = (int(now.timestamp()) // step_s + 1) * step_s
    end = datetime.fromtimestamp(end_epoch, now.tzinfo)
    start = end - length
    start_epoch = end_epoch - int(length.total_seconds())
    rr = RequestRecord
    bucket = ((epoch_seconds(rr.time) - start_epoch) // step_s).label("bucket")
    latbin = _latency_bin(rr.latency_ms).label("latbin")
    q = (select(bucket, rr.model, latbin, func.count().label("n"),
                func.sum(case((rr.status >= 400, 1), else_=0)).label("errors"),
                func.sum(rr.input_tokens).label("input_tokens"),
                func.sum(rr.output_tokens).label("output_tokens"),
                func.sum(rr.cached_tokens).label("cached_tokens"),
                func.sum(rr.cost).label("cost"))
         .where(rr.time >= start, rr.time < end)
         .group_by(bucket, rr.model, latbin))
    if account_id is not None:
        q = q.where(rr.account_id == account_id)
    n_buckets = int(length / step)
    series = [Aggregate() for _ in range(n_buckets)]
    per_model: dict[str, Aggregate] = defaultdict(Aggregate)
    total = Aggregate()
    for row in session.execute(q):
        b = int(row.bucket)
        if 0 <= b < n_buckets:
            series[b].add(row)
        per_model[row.model or "(none)"].add(row)
        total.add(row)
    return Dashboard(
        window=window, start=start, end=end, bucket_seconds=step_s,
        series=[(start + i * step, a) for i, a in enumerate(series)],
        models=sorted(per_model.items(), key=lambda kv: (-kv[1].requests, kv[0])),
        total=total)


def recent_records(session: Session, *, limit: int = 20, account_id: str | None = None,
                   before_id: int | None = None) -> list[RequestRecord]:
    """The newest records (metadata only), keyset-paginated by id."""
    q = select(RequestRecord).order_by(RequestRecord.id.desc()).limit(limit)
    if account_id is not None:
        q = q.where(RequestRecord.account_id == account_id)
    if before_id is not None:
        q = q.where(RequestRecord.id < before_id)
    return list(session.scalars(q))

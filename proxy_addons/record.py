"""Record: exactly one metadata record per request, committed with its charge.

The record has exactly the fields of ``schemas/request-record.schema.json``: numbers, names
from the catalog, hushgate error codes. Never a body, a header, a prompt, a key (only the
key id, and for refused requests only when the key exists) or provider error text.
"""

from __future__ import annotations

import time
from typing import Any

from proxy_addons.state import FlowState


def _ms(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, int((end - start) * 1000))


def build_record(state: FlowState) -> dict[str, Any]:
    """The record of a finished request (cost and debt are set when it is committed)."""
    end = state.done_at or time.monotonic()
    return {
        "time": state.time.isoformat(),
        "request_id": state.request_id,
        "account_id": state.account_id,
        "key_id": state.key_id,
        "endpoint": state.endpoint,
        "method": state.method or "GET",
        "provider": state.model.provider.name if state.model else None,
        "model": state.model.name if state.model else None,
        "stream": state.stream,
        "status": max(0, min(599, state.status)),
        "error_type": state.error_type,
        "input_tokens": state.usage.input_tokens,
        "output_tokens": state.usage.output_tokens,
        "cached_tokens": state.usage.cached_tokens,
        "estimated": state.estimated,
        "cost": state.cost,
        "latency_ms": _ms(state.started, end) or 0,
        "ttfb_ms": _ms(state.started, state.first_byte_at),
        "upstream_ms": _ms(state.forwarded_at, end if state.forwarded else None),
        "request_bytes": state.request_bytes,
        "response_bytes": state.response_bytes,
        "client_ip": state.client_ip,
        "user_agent": state.user_agent,
    }


def minimal_record(state: FlowState) -> dict[str, Any]:
    """The record when :func:`build_record` failed: the same fields, each read defensively,
    marked ``internal_error`` (a request is never left without a record)."""

    def get(name: str, kind: type, default: Any) -> Any:
        value = getattr(state, name, default)
        return value if isinstance(value, kind) and not isinstance(value, bool) or (
            kind is bool and isinstance(value, bool)) else default

    model = getattr(state, "model", None)
    return {
        "time": state.time.isoformat() if hasattr(state.time, "isoformat") else "",
        "request_id": get("request_id", str, "unknown"),
        "account_id": get("account_id", str, None),
        "key_id": get("key_id", str, None),
        "endpoint": get("endpoint", str, "other"),
        "method": get("method", str, "") or "GET",
        "provider": getattr(getattr(model, "provider", None), "name", None),
        "model": getattr(model, "name", None),
        "stream": get("stream", bool, False),
        "status": max(0, min(599, get("status", int, 0))),
        "error_type": "internal_error",
        "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0,
        "estimated": True,
        "cost": get("cost", int, 0),
        "latency_ms": 0, "ttfb_ms": None, "upstream_ms": None,
        "request_bytes": get("request_bytes", int, 0),
        "response_bytes": get("response_bytes", int, 0),
        "client_ip": None, "user_agent": None,
    }

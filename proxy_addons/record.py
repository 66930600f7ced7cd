"""Step 7 — record: exactly one metadata record per request, handed to the writer.

The record has exactly the fields of ``schemas/request-record.schema.json``: numbers, names
from the catalog, hushgate error codes. Never a body, a header, a prompt, a key (only the
key id, and for refused requests only when the key exists) or provider error text.
"""

from __future__ import annotations

import time
from typing import Any

from mitmproxy import http

from proxy_addons.services import Services
from proxy_addons.state import FlowState, get_state
from proxy_addons.writer import Outcome


def _ms(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, int((end - start) * 1000))


def build_record(state: FlowState) -> dict[str, Any]:
    """The record of a finished request (cost is finalised by the writer's settlement)."""
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


class Record:
    def __init__(self, services: Services) -> None:
        self.services = services

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        if state is None or state.finished:
            return
        state.finished = True
        self.services.in_flight -= 1
        record = build_record(state)
        self.services.writer.submit(Outcome(record=record, hold_id=state.hold_id,
                                            charge=state.cost, estimated=state.estimated))
        if state.principal is not None and state.principal.tpm_limit is not None:
            extra = state.usage.output_tokens + max(
                0, state.usage.input_tokens - state.input_estimate)
            self.services.count(self.services.tpm, state.principal.key_id, extra)

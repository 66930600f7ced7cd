"""Step 5 — stream and meter the provider's answer.

``responseheaders``: every successful provider response is streamed to the client through a
:class:`~proxy_addons.sse.StreamTap` (SSE chunk by chunk as it arrives; JSON bodies too, so
no body is ever kept on the flow). Response headers are rebuilt from a whitelist.

Provider errors (status >= 400) are not streamed: their body is replaced in ``response`` by
a hushgate error in the endpoint's format with the same status — the provider's error text
never reaches the client, a log or a record.
"""

from __future__ import annotations

import time

from mitmproxy import http

from proxy_addons.sse import StreamTap
from proxy_addons.state import FlowState, get_state
from proxy_addons.wire import error_response, upstream_error_message

#: Provider response headers passed to the client.
RESPONSE_HEADERS = ("content-type", "content-length", "transfer-encoding", "cache-control",
                    "retry-after")


def upstream_error_code(status: int) -> str:
    if status == 429:
        return "upstream_rate_limited"
    if status >= 500:
        return "upstream_server_error"
    return "upstream_client_error"


def response_headers(upstream: http.Headers, request_id: str) -> http.Headers:
    out = http.Headers()
    for name in RESPONSE_HEADERS:
        value = upstream.get(name)
        if value is not None:
            out[name] = value
    out["x-hushgate-request-id"] = request_id
    return out


def is_sse(headers: http.Headers) -> bool:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower() == "text/event-stream"


class Meter:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        if state is None or not state.forwarded or flow.response is None:
            return
        resp = flow.response
        state.first_byte_at = time.monotonic()
        state.upstream_status = resp.status_code
        if resp.status_code >= 400:
            return  # buffered (bounded by body_size_limit) and replaced in `response`
        sse = is_sse(resp.headers)
        hide = (sse and state.stream and not state.client_wants_usage
                and state.endpoint in ("chat.completions", "completions")
                and "content-length" not in resp.headers)
        state.tap = StreamTap(state.api_format, sse=sse, hide_usage_chunk=hide)
        resp.headers = response_headers(resp.headers, state.request_id)
        resp.stream = state.tap

    def response(self, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        if state is None or not state.forwarded or flow.response is None or state.finished:
            return
        status = flow.response.status_code
        if status >= 400 and state.tap is None:
            self._replace_error(flow, state, status)

    def _replace_error(self, flow: http.HTTPFlow, state: FlowState, status: int) -> None:
        assert flow.response is not None
        retry_after = flow.response.headers.get("retry-after")
        wait = int(retry_after) if retry_after and retry_after.isdigit() else None
        state.refuse(status, upstream_error_code(status))
        flow.response = error_response(state.api_format, status, state.error_type or "",
                                       upstream_error_message(status),
                                       request_id=state.request_id, retry_after=wait)

"""Meter: what came back from the provider, read as numbers only.

At the response headers, :func:`meter_headers` rebuilds the headers from a whitelist and
streams an SSE answer through a :class:`~proxy_addons.sse.StreamTap`; a JSON answer is
buffered by mitmproxy (bounded by ``body_size_limit``) and read by :func:`meter_body` once
complete, so a body that is cut or not JSON becomes a 502 in the endpoint's format (with no
charge) instead of a truncated 200.

Provider errors (status >= 400) are replaced by a hushgate error in the endpoint's format
with the same status: the provider's error text never reaches the client, a log or a record.
"""

from __future__ import annotations

import time

from mitmproxy import http

from proxy_addons.sse import StreamTap, read_json_body
from proxy_addons.state import FlowState
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


def response_headers(upstream: http.Headers, request_id: str, *,
                     close: bool = False) -> http.Headers:
    out = http.Headers()
    for name in RESPONSE_HEADERS:
        value = upstream.get(name)
        if value is not None:
            out[name] = value
    out["x-hushgate-request-id"] = request_id
    if close:
        out["connection"] = "close"
    return out


def is_sse(headers: http.Headers) -> bool:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower() == "text/event-stream"


def meter_headers(response: http.Response, state: FlowState) -> None:
    """The provider's response headers arrived: whitelist them; tap an SSE stream."""
    state.first_byte_at = time.monotonic()
    state.upstream_status = response.status_code
    if response.status_code >= 400:
        return  # buffered (bounded by body_size_limit) and replaced in `response`
    response.headers = response_headers(response.headers, state.request_id,
                                        close=state.client_close)
    if is_sse(response.headers):
        hide = (state.stream and not state.client_wants_usage
                and state.endpoint in ("chat.completions", "completions"))
        state.tap = StreamTap(state.api_format, hide_usage_chunk=hide)
        response.stream = state.tap


def meter_body(flow: http.HTTPFlow, state: FlowState) -> None:
    """The provider's answer is complete: replace errors, read a JSON body's usage."""
    response = flow.response
    assert response is not None
    status = response.status_code
    if state.tap is not None:
        state.response_bytes = state.tap.delivered
        return
    if status >= 400:
        retry_after = response.headers.get("retry-after")
        wait = int(retry_after) if retry_after and retry_after.isdigit() else None
        state.refuse(status, upstream_error_code(status))
        flow.response = error_response(state.api_format, status, state.error_type or "",
                                       upstream_error_message(status),
                                       request_id=state.request_id, retry_after=wait)
        return
    try:
        read = read_json_body(response.content)
    except ValueError:  # a content-encoding that does not decode
        read = None
    if read is None:
        state.refuse(502, "invalid_upstream_response")
        flow.response = error_response(state.api_format, 502, "invalid_upstream_response",
                                       "the provider's answer was not valid",
                                       request_id=state.request_id)
        return
    state.usage, state.text_chars = read
    state.response_bytes = len(response.raw_content or b"")


def classify_error(state: FlowState, message: str) -> tuple[int, str]:
    """(status, error type) of a flow that ended with an error. Never keeps the message."""
    if state.error_type in ("upstream_timeout", "request_timeout"):
        return 504, state.error_type
    if message.startswith("Client disconnected"):
        return 499, "client_disconnected"
    if "body_size_limit" in message:
        return (413, "request_too_large") if state.upstream_status is None else (
            502, "response_too_large")
    if not state.forwarded:
        return 400, "invalid_request"
    if state.upstream_status is None:
        return 502, "upstream_unreachable"
    return 502, "upstream_cut"

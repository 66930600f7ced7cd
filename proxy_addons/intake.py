"""Intake: a new request's state, and what is wrong with it from the headers alone.

Runs at the request headers, before the body is read. Refusals found here (unknown
endpoint, wrong method, key or unknown parameter in the query string, wrong content type,
plain HTTP from a non-loopback client) are answered once the body is read, so the record can
say whether the refused request asked for a stream; only an oversized declared body (413)
and a header with a control character are answered at once.
"""

from __future__ import annotations

import json
import secrets
from urllib.parse import parse_qsl

from mitmproxy import http
from mitmproxy.net.http import http1

from control.core.base import utcnow
from control.core.net import is_loopback
from proxy_addons.services import Services
from proxy_addons.state import FlowState, Refusal
from proxy_addons.wire import ENDPOINTS, QUERY_PARAMS, classify, guess_format

_KEY_PARAMS = frozenset({"key", "api_key", "api-key", "apikey", "x-api-key", "access_token",
                         "token", "authorization", "auth"})
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"


def new_request_id() -> str:
    return secrets.token_urlsafe(12)


def query_has_key(query: str) -> bool:
    """True if the query string carries something that looks like a credential."""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.lower() in _KEY_PARAMS or value.startswith(("hg_", "hga_", "Bearer")):
            return True
    return "hg_" in query


def unknown_query_param(endpoint: str, query: str) -> str | None:
    """The first query parameter ``endpoint`` does not accept, or None."""
    allowed = QUERY_PARAMS.get(endpoint, frozenset())
    for name, _ in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            return name[:64]
    return None


def is_json_content_type(value: str | None) -> bool:
    if not value:
        return False
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json"


def path_hint(path: str) -> str:
    """For an unknown path: the endpoint the client probably meant (a missing or doubled
    ``/v1`` in the SDK's base URL), as a sentence; else a pointer to the endpoint list."""
    bare = path.split("?", 1)[0].rstrip("/")
    while bare.startswith("/v1/v1/"):
        bare = bare[3:]
    for candidate in (bare, "/v1" + bare):
        if candidate in ENDPOINTS and candidate != path.split("?", 1)[0].rstrip("/"):
            return (f"unknown endpoint; did you mean {candidate}? (check the /v1 in your "
                    "client's base URL)")
    return "unknown endpoint; this gateway serves " + ", ".join(ENDPOINTS)


def check_immediate(headers: http.Headers, max_bytes: int) -> None:
    """The checks answered before the body is read. Raises Refusal."""
    for name, value in headers.fields:
        if any(c in name or c in value for c in (b"\r", b"\n", b"\0")):
            raise Refusal(400, "invalid_header", "a header contains a control character")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise Refusal(400, "invalid_request", "invalid Content-Length")
        if int(length) > max_bytes:
            raise Refusal(413, "request_too_large", "the request body is too large")


def check_headers(method: str, path: str, headers: http.Headers, *, tls: bool,
                  peer: str | None, allow_plain_http: bool, max_bytes: int) -> None:
    """The header-only checks, as a pure function. Raises Refusal."""
    check_immediate(headers, max_bytes)
    check_request_line(method, path, headers, tls=tls, peer=peer,
                       allow_plain_http=allow_plain_http)


def check_request_line(method: str, path: str, headers: http.Headers, *, tls: bool,
                       peer: str | None, allow_plain_http: bool) -> None:
    """The checks whose refusal can wait for the body. Raises Refusal."""
    if not tls and not allow_plain_http and not is_loopback(peer):
        raise Refusal(403, "tls_required", "use HTTPS to reach this gateway")
    endpoint = classify(path)
    if endpoint is None:
        raise Refusal(404, "unknown_endpoint", path_hint(path))
    _, _, query = path.partition("?")
    if query and query_has_key(query):
        raise Refusal(400, "key_in_query",
                      "API keys are not accepted in the query string; use a header")
    if query:
        bad = unknown_query_param(endpoint.name, query)
        if bad is not None:
            raise Refusal(400, "unknown_parameter",
                          f"query parameter {bad!r} is not accepted on this endpoint",
                          param=bad)
    if method != endpoint.method:
        raise Refusal(405, "method_not_allowed", f"use {endpoint.method} for this endpoint")
    if method == "POST" and not is_json_content_type(headers.get("content-type")):
        raise Refusal(400, "invalid_content_type", "the request body must be application/json")


def new_state(services: Services, flow: http.HTTPFlow) -> FlowState:
    """The state of a request that just arrived (metadata only)."""
    req = flow.request
    peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
    endpoint = classify(req.path)
    state = FlowState(request_id=new_request_id(), time=utcnow())
    state.method = req.method[:8]
    state.endpoint = endpoint.name if endpoint else "other"
    state.api_format = (endpoint.api_format if endpoint and endpoint.name != "models"
                        else guess_format(req.headers))
    state.client_ip = services.client_ip(peer)
    state.user_agent = services.user_agent(req.headers.get("user-agent"))
    state.client_close = http1.connection_close(req.http_version, req.headers)
    return state


def intake(services: Services, flow: http.HTTPFlow, state: FlowState) -> None:
    """Header checks: raises an immediate Refusal, or keeps a deferred one on the state."""
    req = flow.request
    proxy = services.config.proxy
    check_immediate(req.headers, int(proxy["max_request_bytes"]))
    peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
    try:
        check_request_line(req.method, req.path, req.headers,
                           tls=flow.client_conn.tls_established, peer=peer,
                           allow_plain_http=bool(proxy["allow_plain_http"]))
    except Refusal as refusal:
        state.deferred = refusal


def asked_for_stream(raw: bytes | None) -> bool:
    """Whether a refused request's body asked for a stream (for its record only)."""
    if not raw or b'"stream"' not in raw:
        return False
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and body.get("stream") is True

"""Step 0 — intake: give the flow its state and refuse what is wrong from the headers alone.

Runs in ``requestheaders``, before the body is read: unknown endpoints (404/405), keys in
the query string (400), oversized declared bodies (413), wrong content type (400), and plain
HTTP from a non-loopback client unless ``proxy.allow_plain_http`` is set (403).
"""

from __future__ import annotations

import secrets
from urllib.parse import parse_qsl

from mitmproxy import http

from control.core.base import utcnow
from control.core.net import is_loopback
from proxy_addons.services import Services
from proxy_addons.state import STATE_KEY, FlowState, Refusal, answer, refusal_for
from proxy_addons.wire import classify, guess_format

_KEY_PARAMS = frozenset({"key", "api_key", "api-key", "apikey", "x-api-key", "access_token",
                         "token", "authorization", "auth"})


def new_request_id() -> str:
    return secrets.token_urlsafe(12)


def query_has_key(query: str) -> bool:
    """True if the query string carries something that looks like a credential."""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.lower() in _KEY_PARAMS or value.startswith(("hg_", "hga_", "Bearer")):
            return True
    return "hg_" in query


def is_json_content_type(value: str | None) -> bool:
    if not value:
        return False
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json"


def check_headers(method: str, path: str, headers: http.Headers, *, tls: bool,
                  peer: str | None, allow_plain_http: bool, max_bytes: int) -> None:
    """The header-only checks, as a pure function. Raises Refusal."""
    for name, value in headers.fields:
        if any(c in name or c in value for c in (b"\r", b"\n", b"\0")):
            raise Refusal(400, "invalid_header", "a header contains a control character")
    if not tls and not allow_plain_http and not is_loopback(peer):
        raise Refusal(403, "tls_required", "use HTTPS to reach this gateway")
    endpoint = classify(path)
    if endpoint is None:
        raise Refusal(404, "unknown_endpoint", "unknown endpoint")
    _, _, query = path.partition("?")
    if query and query_has_key(query):
        raise Refusal(400, "key_in_query",
                      "API keys are not accepted in the query string; use a header")
    if method != endpoint.method:
        raise Refusal(405, "method_not_allowed", f"use {endpoint.method} for this endpoint")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise Refusal(400, "invalid_request", "invalid Content-Length")
        if int(length) > max_bytes:
            raise Refusal(413, "request_too_large", "the request body is too large")
    if method == "POST" and not is_json_content_type(headers.get("content-type")):
        raise Refusal(400, "invalid_content_type", "the request body must be application/json")


HEALTH_PATH = "/healthz"


class Intake:
    def __init__(self, services: Services) -> None:
        self.services = services
        proxy = services.config.proxy
        self.allow_plain_http = bool(proxy["allow_plain_http"])
        self.max_bytes = int(proxy["max_request_bytes"])

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(STATE_KEY) is not None:
            return
        req = flow.request
        if req.path == HEALTH_PATH and req.method in ("GET", "HEAD"):
            flow.response = self._health()
            return
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
        endpoint = classify(req.path)
        state = FlowState(request_id=new_request_id(), time=utcnow())
        flow.metadata[STATE_KEY] = state
        self.services.in_flight += 1
        try:
            state.method = req.method[:8]
            state.endpoint = endpoint.name if endpoint else "other"
            state.api_format = endpoint.api_format if endpoint else guess_format(req.headers)
            if state.endpoint == "models":
                state.api_format = guess_format(req.headers)
            state.client_ip = self.services.client_ip(peer)
            state.user_agent = self.services.user_agent(req.headers.get("user-agent"))
            if flow.response is not None or flow.error is not None:
                return
            check_headers(req.method, req.path, req.headers,
                          tls=flow.client_conn.tls_established, peer=peer,
                          allow_plain_http=self.allow_plain_http, max_bytes=self.max_bytes)
        except Refusal as refusal:
            answer(flow, state, refusal)
        except Exception as exc:  # noqa: BLE001 - fail closed
            answer(flow, state, refusal_for(exc, "Intake.requestheaders"))

    def _health(self) -> http.Response:
        ok = self.services.writer.alive
        body = b'{"status":"ok"}' if ok else b'{"status":"unavailable"}'
        return http.Response.make(200 if ok else 503, body,
                                  {"content-type": "application/json",
                                   "cache-control": "no-store"})

"""Step 4 — forward: the gate, then the rewrite towards the provider.

The gate lets a request through only if authenticate, route and reserve all set their flags
(default deny: a step that was skipped, crashed silently, or forgot to refuse can't open it).
Then the flow is pointed at the model's provider, the body is the rewritten one, and the
headers are rebuilt from a whitelist: the client's key, cookies, forwarding and identifying
headers never reach the provider; the operator's provider key is set instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

from mitmproxy import ctx, http

from control.core.config import Provider
from proxy_addons.services import Services
from proxy_addons.state import FlowState, Refusal, get_state, request_step

log = logging.getLogger("hushgate.proxy")

#: Client headers passed to the provider. Everything else is dropped.
FORWARDED_HEADERS = ("content-type", "accept", "openai-beta", "anthropic-version",
                     "anthropic-beta")


def upstream_target(base_url: str, path: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) for a client path on a provider ``base_url``.

    ``https://api.openai.com`` and ``https://api.openai.com/v1`` both work: a base path
    ending in ``/v1`` is not doubled.
    """
    parts = urlsplit(base_url)
    scheme = parts.scheme
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    base = parts.path.rstrip("/")
    path_only, _, query = path.partition("?")
    if base.endswith("/v1") and path_only.startswith("/v1/"):
        path_only = path_only[3:]
    full = base + path_only + (f"?{query}" if query else "")
    return scheme, host, port, full


def upstream_headers(client: http.Headers, provider: Provider, api_key: str,
                     host_header: str) -> http.Headers:
    """The provider-bound headers: whitelisted client headers + the provider key."""
    out = http.Headers()
    for name in FORWARDED_HEADERS:
        value = client.get(name)
        if value is not None:
            out[name] = value
    out["host"] = host_header
    out["user-agent"] = "hushgate"
    out["accept-encoding"] = "identity"  # the meter reads usage from plain bytes
    if provider.api_format == "anthropic":
        out["x-api-key"] = api_key
        out.setdefault("anthropic-version", "2023-06-01")
    else:
        out["authorization"] = f"Bearer {api_key}"
    return out


def stop_upstream_timer(flow: http.HTTPFlow) -> None:
    """The provider answered (or the flow failed): the timeout no longer applies, and its
    pending callback must not keep the flow in memory for ``upstream_timeout_ms``."""
    state = get_state(flow)
    if state is not None and state.upstream_timer is not None:
        state.upstream_timer.cancel()
        state.upstream_timer = None


class Forward:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.timeout = services.config.proxy["upstream_timeout_ms"] / 1000

    @request_step
    def request(self, flow: http.HTTPFlow, state: FlowState) -> None:
        if not state.may_forward or state.model is None or state.upstream_body is None:
            raise Refusal(500, "not_authorized_by_pipeline",
                          "hushgate could not process this request; it was not forwarded")
        provider = state.model.provider
        api_key = provider.api_key()
        if not api_key:
            raise Refusal(503, "provider_unconfigured",
                          "the provider of this model is not configured")
        scheme, host, port, path = upstream_target(provider.base_url, flow.request.path)
        default_port = 443 if scheme == "https" else 80
        host_header = host if port == default_port else f"{host}:{port}"
        req = flow.request
        req.headers = upstream_headers(req.headers, provider, api_key, host_header)
        req.scheme, req.host, req.port, req.path = scheme, host, port, path
        req.headers["host"] = host_header
        req.content = state.upstream_body
        state.upstream_body = None
        state.forwarded = True
        state.forwarded_at = time.monotonic()
        state.upstream_timer = asyncio.get_running_loop().call_later(
            self.timeout, self._check_timeout, flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        stop_upstream_timer(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        stop_upstream_timer(flow)

    def _check_timeout(self, flow: http.HTTPFlow) -> None:
        """No response headers within ``proxy.upstream_timeout_ms``: close the upstream
        connection; the flow then ends through the ``error`` hook as ``upstream_timeout``."""
        state = get_state(flow)
        if state is None or state.finished or state.first_byte_at is not None:
            return
        state.error_type = "upstream_timeout"
        try:
            server = ctx.master.addons.get("proxyserver")
            handler = server.connections.get(flow.client_conn.id)
            if handler is not None and flow.server_conn in handler.transports:
                handler.close_connection(flow.server_conn)
        except Exception as exc:  # noqa: BLE001 - mitmproxy internals; tcp_timeout still applies
            log.warning("hushgate: could not close a timed-out upstream connection (%s)",
                        type(exc).__name__)

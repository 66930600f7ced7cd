"""Forward: point an admitted request at its provider, and watch its deadlines.

:func:`forward` takes an :class:`~proxy_addons.state.Admission` (nothing else opens the way
to a provider). The flow is pointed at the model's provider, the body is the rewritten one,
and the headers are rebuilt from a whitelist: the client's key, cookies, forwarding and
identifying headers never reach the provider; the operator's provider key is set instead.

:class:`Watchdog` is the request's one timer. It ends the upstream connection when the
provider sends no response headers within ``proxy.upstream_timeout_ms``, when a stream
stalls for ``proxy.stream_idle_timeout_ms`` (both ``upstream_timeout``), or when the request
has run ``proxy.max_request_seconds`` (``request_timeout``). The flow then ends through the
``error`` hook with that error type.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

from mitmproxy import ctx, http

from control.core.config import Provider
from proxy_addons.state import Admission, FlowState, Refusal

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


def scrub_request(flow: http.HTTPFlow) -> None:
    """Drop the request's body and headers (by now they hold the provider key)."""
    flow.request.content = None
    # A new empty Headers, not ``headers.clear()``: MutableMapping.clear pops one field at
    # a time, rebuilding the header tuple each time (it was 15% of the event loop's time).
    flow.request.headers = http.Headers()
    flow.request.path = flow.request.path.split("?", 1)[0]


def forward(flow: http.HTTPFlow, admission: Admission) -> None:
    """Rewrite the flow towards the admitted model's provider. Raises Refusal (503)."""
    if not isinstance(admission, Admission):
        raise Refusal(500, "not_admitted",
                      "hushgate could not process this request; it was not forwarded")
    provider = admission.model.provider
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
    req.content = admission.upstream_body


class Watchdog:
    """One timer per forwarded request for its three deadlines (see the module docstring)."""

    __slots__ = ("flow", "state", "first_byte", "idle", "total", "started", "handle")

    def __init__(self, flow: http.HTTPFlow, state: FlowState, *, first_byte: float,
                 idle: float, total: float) -> None:
        self.flow, self.state = flow, state
        self.first_byte, self.idle, self.total = first_byte, idle, total
        self.started = time.monotonic()
        self.handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            min(first_byte, total), self._fire)

    def cancel(self) -> None:
        """The request ended: a pending timer would keep the whole flow in memory."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _next(self, now: float) -> tuple[str | None, float]:
        """(error type if a deadline has passed, else None; seconds to the next check)."""
        state = self.state
        total_left = self.started + self.total - now
        if total_left <= 0:
            return "request_timeout", 0
        if state.first_byte_at is None:
            left = self.started + self.first_byte - now
        elif state.tap is not None:
            left = state.tap.last_chunk_at + self.idle - now
        else:
            left = total_left
        if left <= 0:
            return "upstream_timeout", 0
        return None, min(left, total_left)

    def _fire(self) -> None:
        self.handle = None
        if self.state.finished:
            return
        expired, wait = self._next(time.monotonic())
        if expired is None:
            self.handle = asyncio.get_running_loop().call_later(wait, self._fire)
            return
        self.state.error_type = expired
        close_upstream(self.flow)


def close_upstream(flow: http.HTTPFlow) -> None:
    """Close the flow's upstream connection; mitmproxy then ends it through ``error``."""
    try:
        server = ctx.master.addons.get("proxyserver")
        handler = server.connections.get(flow.client_conn.id)
        if handler is not None and flow.server_conn in handler.transports:
            handler.close_connection(flow.server_conn)
    except Exception as exc:  # noqa: BLE001 - mitmproxy internals; tcp_timeout still applies
        log.warning("hushgate: could not close a timed-out upstream connection (%s)",
                    type(exc).__name__)

"""hushgate JSON instead of mitmproxy's own HTML error page.

mitmproxy answers some protocol errors by itself, with no hook able to change the answer:
an unreachable provider (502), an upstream connection closed before any response — which is
how the forward stage's watchdog ends a request — (502), a chunked request body over
``body_size_limit`` (413), a malformed request line or header block (400). ``Http1Server``
then sends ``mitmproxy.proxy.layers.http._http1.make_error_response(status, message)``: an
HTML page with ``Server: mitmproxy`` whose message can quote raw request or upstream bytes.
The ``error`` hook runs before that answer but can't replace it (it is not a response the
flow holds), and there is no documented option or hook for it in mitmproxy 12.

So hushgate replaces that one module-level function (``Http1Server`` looks it up by name at
call time) with :func:`error_response_bytes`, installed by :func:`install` — called by
``ProxyServer`` before mitmproxy starts, and again (idempotently) when the Gateway loads.
The answer is ``Content-Type: application/json`` with the body of
:func:`proxy_addons.wire.proxy_error_body`, a generic message per error code, no
``Server`` header, ``Connection: close``, and never mitmproxy's message.

The status, code and wire format are the ones the Gateway decided for the flow in its
``error`` hook (:func:`decide`; e.g. 504 ``upstream_timeout``, which mitmproxy alone would
answer as a 502), passed through a context variable. mitmproxy resumes the flow and writes
the error answer in the task that ran the hook, so the value reaches exactly that answer; it
is read once and cleared. With no flow (a request line that doesn't parse) or no decision,
the status is mitmproxy's and the body a shape both SDKs parse.

A stream the provider cuts (or that hushgate ends at a deadline) has already sent its
headers, so mitmproxy would just close the connection: the SDKs then report a connection
error. :func:`install` also wraps ``Http1Server.send`` so that, for such a flow, the
terminal error event the Gateway decided (in the endpoint's own SSE format) is sent, then
the end of the chunked body, before the connection is closed.
"""

from __future__ import annotations

import contextvars
import json
import logging

from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, layer
from mitmproxy.proxy.layers.http import _events, _http1

from proxy_addons.wire import proxy_error_body

log = logging.getLogger("hushgate.proxy")

#: (status, error code, request id, wire format, stream tail) the Gateway decided for the
#: error answer to come.
_Decision = tuple[int, str | None, str | None, str | None, bytes | None]
_DECIDED: contextvars.ContextVar[_Decision | None] = \
    contextvars.ContextVar("hushgate_error_answer", default=None)

#: Sent if building the answer fails (it must never raise inside mitmproxy's layer).
_FALLBACK_BODY = (b'{"type":"error","error":{"type":"api_error","code":"proxy_error",'
                  b'"message":"hushgate could not complete this request"}}')
_FALLBACK = (b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\n"
             b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
             % (len(_FALLBACK_BODY), _FALLBACK_BODY))


def error_response_bytes(status_code: int, message: str = "") -> bytes:
    """Replacement for ``_http1.make_error_response``: hushgate's JSON error, as bytes.
    ``message`` (mitmproxy's text) is ignored on purpose."""
    del message
    try:
        decided = _DECIDED.get()
        _DECIDED.set(None)
        code = request_id = api_format = None
        if decided is not None and decided[0] >= 400:
            status_code, code, request_id, api_format, _ = decided
        headers = {"content-type": "application/json", "cache-control": "no-store",
                   "connection": "close"}
        if request_id:
            headers["x-hushgate-request-id"] = request_id
        body = json.dumps(proxy_error_body(status_code, code, api_format),
                          separators=(",", ":"))
        return http1.assemble_response(http.Response.make(status_code, body.encode(), headers))
    except Exception as exc:  # noqa: BLE001 - raising here would crash the connection
        log.error("hushgate: building an error answer failed (%s)", type(exc).__name__)
        return _FALLBACK


_original_send = _http1.Http1Server.send


def _send(self: _http1.Http1Server, event: _events.HttpEvent) -> layer.CommandGenerator[None]:
    """``Http1Server.send``, plus a clean end for a stream cut after its headers. Returns the
    original generator for every other event (no extra generator frame per event)."""
    if (isinstance(event, _events.ResponseProtocolError) and self.response is not None
            and self.conn.state & ConnectionState.CAN_WRITE):
        return _end_stream(self, event)
    return _original_send(self, event)


def _end_stream(self: _http1.Http1Server, event: _events.HttpEvent
                ) -> layer.CommandGenerator[None]:
    decided = _DECIDED.get()
    _DECIDED.set(None)
    tail = decided[4] if decided is not None else None
    if tail and self.response is not None:
        chunked = "chunked" in self.response.headers.get("transfer-encoding", "").lower()
        data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail) if chunked else tail
        yield commands.SendData(self.conn, data)
    yield from _original_send(self, event)


def decide(status: int, code: str | None, request_id: str | None, api_format: str,
           stream_tail: bytes | None = None) -> None:
    """The answer to the error mitmproxy is about to send for this flow (called by the
    Gateway's ``error`` hook): the status and code in ``api_format``, or for a stream that
    already started, the terminal event ``stream_tail``."""
    _DECIDED.set((status, code, request_id, api_format, stream_tail))


def install() -> None:
    """Make mitmproxy's HTTP/1 server answer its own errors with hushgate's JSON, and end
    cut streams cleanly. Idempotent; call before mitmproxy serves its first connection."""
    if _http1.make_error_response is not error_response_bytes:
        _http1.make_error_response = error_response_bytes
    if _http1.Http1Server.send is not _send:
        _http1.Http1Server.send = _send  # type: ignore[method-assign]


def installed() -> bool:
    return _http1.make_error_response is error_response_bytes and _http1.Http1Server.send is _send

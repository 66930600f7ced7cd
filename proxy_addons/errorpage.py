"""hushgate JSON instead of mitmproxy's own HTML error page.

mitmproxy answers some protocol errors by itself, with no hook able to change the answer:
an unreachable provider (502), an upstream connection closed before any response — which is
how the forward step's timeout ends a request — (502), a chunked request body over
``body_size_limit`` (413), a malformed request line or header block (400). ``Http1Server``
then sends ``mitmproxy.proxy.layers.http._http1.make_error_response(status, message)``: an
HTML page with ``Server: mitmproxy`` whose message can quote raw request or upstream bytes.
The ``error`` hook runs before that answer but can't replace it (it is not a response the
flow holds), and there is no documented option or hook for it in mitmproxy 12.

So hushgate replaces that one module-level function (``Http1Server`` looks it up by name at
call time) with :func:`error_response_bytes`, installed by :func:`install` — called by
``ProxyServer`` before mitmproxy starts, and again (idempotently) when the pipeline loads.
The answer is ``Content-Type: application/json`` with the body of
:func:`proxy_addons.wire.proxy_error_body`, a generic message per error code, no
``Server`` header, ``Connection: close``, and never mitmproxy's message.

The status and code are the ones the pipeline recorded for the flow when there is one:
:class:`ErrorPage` runs in the ``error`` hook after the settle step and passes the flow's
outcome (e.g. 504 ``upstream_timeout``, which mitmproxy alone would answer as a 502) through
a context variable. mitmproxy resumes the flow and writes the error answer in the task that
ran the hook, so the value reaches exactly that answer; it is read once and cleared. With no
flow (a request line that doesn't parse) or no decision, the status is mitmproxy's.
"""

from __future__ import annotations

import contextvars
import json
import logging

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from proxy_addons.state import get_state
from proxy_addons.wire import proxy_error_body

log = logging.getLogger("hushgate.proxy")

#: (status, error code, request id) the pipeline decided for the error answer to come.
_DECIDED: contextvars.ContextVar[tuple[int, str | None, str | None] | None] = \
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
        code = request_id = None
        if decided is not None and decided[0] >= 400:
            status_code, code, request_id = decided
        headers = {"content-type": "application/json", "cache-control": "no-store",
                   "connection": "close"}
        if request_id:
            headers["x-hushgate-request-id"] = request_id
        body = json.dumps(proxy_error_body(status_code, code), separators=(",", ":"))
        return http1.assemble_response(http.Response.make(status_code, body.encode(), headers))
    except Exception as exc:  # noqa: BLE001 - raising here would crash the connection
        log.error("hushgate: building an error answer failed (%s)", type(exc).__name__)
        return _FALLBACK


def install() -> None:
    """Make mitmproxy's HTTP/1 server answer its own errors with hushgate's JSON.
    Idempotent; call before mitmproxy serves its first connection."""
    if _http1.make_error_response is not error_response_bytes:
        _http1.make_error_response = error_response_bytes


def installed() -> bool:
    return _http1.make_error_response is error_response_bytes


class ErrorPage:
    """``error`` hook (after settle): hand the flow's recorded outcome to the error answer
    mitmproxy may send next."""

    def load(self, _loader: object) -> None:
        install()

    def error(self, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        if state is None or state.status < 400:
            return
        _DECIDED.set((state.status, state.error_type, state.request_id))

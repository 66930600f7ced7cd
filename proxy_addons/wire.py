"""Wire formats: which endpoints hushgate serves, and its errors in each provider's format.

Errors are always hushgate's own JSON: they never carry provider error text or upstream
bytes. OpenAI: ``{"error": {"message", "type", "code", "param"}}``; Anthropic:
``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.http import Headers


@dataclass(frozen=True)
class Endpoint:
    name: str  # as in the record and config ("chat.completions", "messages", "models")
    api_format: str
    method: str


ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint("chat.completions", "openai", "POST"),
    "/v1/completions": Endpoint("completions", "openai", "POST"),
    "/v1/embeddings": Endpoint("embeddings", "openai", "POST"),
    "/v1/responses": Endpoint("responses", "openai", "POST"),
    "/v1/messages": Endpoint("messages", "anthropic", "POST"),
    "/v1/models": Endpoint("models", "openai", "GET"),
}

#: The OpenAI error ``type`` for a status (Anthropic uses its own names below).
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 402: "insufficient_quota", 403: "permission_error", 404: "not_found_error",
                 405: "invalid_request_error", 413: "invalid_request_error",
                 429: "rate_limit_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    402: "billing_error", 403: "permission_error", 404: "not_found_error",
                    405: "invalid_request_error", 413: "request_too_large",
                    429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def classify(path: str) -> Endpoint | None:
    """The endpoint of a request path (query string ignored), or None."""
    return ENDPOINTS.get(path.split("?", 1)[0].rstrip("/") or "/")


def guess_format(headers: Headers) -> str:
    """The wire format a client speaks, for errors on unknown paths."""
    if "anthropic-version" in headers or "x-api-key" in headers:
        return "anthropic"
    return "openai"


#: Query parameters each endpoint accepts (forwarded to the provider); any other is refused.
QUERY_PARAMS: dict[str, frozenset[str]] = {
    "messages": frozenset({"beta"}),  # the Anthropic SDK's client.beta.messages
    "models": frozenset({"limit", "after_id", "before_id", "after", "order", "beta"}),
}


def error_body(api_format: str, status: int, code: str, message: str, *,
               details: dict | None = None, param: str | None = None) -> dict:
    """A hushgate error in the endpoint's wire format. ``details`` (numbers and names, never
    content) are added beside the standard fields, where both SDKs keep them in ``body``."""
    if api_format == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        error = {"type": kind, "message": message, **(details or {})}
        return {"type": "error", "error": error}
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": param,
                      **(details or {})}}


def json_response(status: int, body: dict, *, request_id: str | None = None,
                  extra: dict[str, str] | None = None) -> http.Response:
    headers = {"content-type": "application/json", "cache-control": "no-store"}
    if request_id:
        headers["x-hushgate-request-id"] = request_id
    headers.update(extra or {})
    return http.Response.make(status, json.dumps(body, separators=(",", ":")).encode(), headers)


def error_response(api_format: str, status: int, code: str, message: str, *,
                   request_id: str | None = None, retry_after: int | None = None,
                   details: dict | None = None, param: str | None = None) -> http.Response:
    """A hushgate error response in the endpoint's wire format."""
    extra = {"retry-after": str(retry_after)} if retry_after is not None else None
    return json_response(status, error_body(api_format, status, code, message,
                                            details=details, param=param),
                         request_id=request_id, extra=extra)


#: Generic messages for provider failures: the provider's own text is never passed on.
UPSTREAM_MESSAGES = {
    400: "the provider rejected the request as invalid",
    401: "the provider refused the operator's credentials",
    403: "the provider refused the request",
    404: "the provider does not know this resource",
    408: "the provider timed out",
    413: "the provider refused the request size",
    422: "the provider could not process the request",
    429: "the provider is rate limiting; retry later",
}


def upstream_error_message(status: int) -> str:
    if status in UPSTREAM_MESSAGES:
        return UPSTREAM_MESSAGES[status]
    if status >= 500:
        return "the provider failed to answer"
    return "the provider returned an error"


#: Errors mitmproxy answers by itself (see :mod:`proxy_addons.errorpage`), by hushgate error
#: code: (Anthropic-style ``error.type``, message). The message is generic: mitmproxy's own
#: text can quote raw request or upstream bytes and is never passed on.
PROXY_ERRORS: dict[str, tuple[str, str]] = {
    "invalid_request": ("invalid_request_error", "the request is not valid HTTP"),
    "request_too_large": ("request_too_large", "the request body is too large"),
    "upstream_unreachable": ("api_error", "the provider could not be reached or did not "
                                          "answer"),
    "upstream_timeout": ("timeout_error", "the provider did not answer in time"),
    "response_too_large": ("api_error", "the provider's response was too large"),
    "proxy_error": ("api_error", "hushgate could not complete this request"),
    "upstream_cut": ("api_error", "the provider's answer was cut off"),
    "invalid_upstream_response": ("api_error", "the provider's answer was not valid"),
    "request_timeout": ("timeout_error", "the request ran longer than this gateway allows"),
    "internal_error": ("api_error", "hushgate could not complete this request"),
}
#: The hushgate error code of a status mitmproxy chose, when the Gateway did not decide.
_PROXY_ERROR_CODES = {400: "invalid_request", 413: "request_too_large",
                      502: "upstream_unreachable", 504: "upstream_timeout"}


def proxy_error_code(status: int, code: str | None = None) -> str:
    if code in PROXY_ERRORS:
        return code
    return _PROXY_ERROR_CODES.get(status, "invalid_request" if status < 500 else "proxy_error")


def proxy_error_body(status: int, code: str | None = None,
                     api_format: str | None = None) -> dict:
    """The body of an error mitmproxy answers itself. In the endpoint's format when the
    request's endpoint is known; with no flow at all (a request line that does not parse),
    one shape both SDKs parse: ``{"type": "error", "error": {"type", "code", "message"}}``
    (Anthropic's envelope; OpenAI's SDK reads ``error.message``/``type``/``code`` from it)."""
    code = proxy_error_code(status, code)
    kind, message = PROXY_ERRORS.get(code, PROXY_ERRORS["proxy_error"])
    if api_format is not None:
        return error_body(api_format, status, code, message)
    return {"type": "error", "error": {"type": kind, "code": code, "message": message}}


def stream_error_event(api_format: str, status: int, code: str) -> bytes:
    """The terminal SSE event hushgate ends a broken stream with, in the endpoint's own
    format, so the SDKs raise a clean API error instead of a connection error."""
    _, message = PROXY_ERRORS.get(code, ("api_error", "the provider's stream was cut"))
    if api_format == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return b"event: error\ndata: " + json.dumps(body, separators=(",", ":")).encode() + \
            b"\n\n"
    # Every OpenAI endpoint's SDK stream raises APIError on a ``{"error": ...}`` event.
    error = {"message": message, "type": "server_error", "code": code, "param": None}
    return b"data: " + json.dumps({"error": error}, separators=(",", ":")).encode() + b"\n\n"

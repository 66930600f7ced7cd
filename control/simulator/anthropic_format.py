"""Anthropic wire format: ``/v1/messages`` (plain and streamed), token counting, models,
and Anthropic-shaped errors.

Usage follows Anthropic's split: ``input_tokens`` are the prompt tokens *not* read from
the cache and ``cache_read_input_tokens`` the cached ones, so their sum is the documented
prompt-token count.
"""

from __future__ import annotations

from typing import Any

from control.simulator.common import Ctx, new_id
from control.simulator.text import prompt_tokens
from control.simulator.wire import Reply, phrase, sse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          500: "api_error", 529: "overloaded_error"}

_FAULT_MESSAGES = {
    400: "Invalid request (simulated provider error).",
    429: "Number of request tokens has exceeded your per-minute rate limit.",
    500: "Internal server error",
    529: "Overloaded",
}


def _headers() -> list[tuple[str, str]]:
    return [("request-id", new_id("req_"))]


def error_type(status: int) -> str:
    """Anthropic's ``error.type`` for an HTTP status."""
    return _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error(status: int, message: str, type_: str | None = None) -> Reply:
    """An error in Anthropic's format: ``{"type": "error", "error": {type, message}}``."""
    headers = _headers()
    return Reply.json({"type": "error", "error": {"type": type_ or error_type(status),
                                                  "message": message},
                       "request_id": headers[0][1]}, status, headers)


def fault_error(status: int, error_text: str | None) -> Reply:
    """The error a ``status_<code>`` fault answers, with the planted error text."""
    message = _FAULT_MESSAGES.get(status, phrase(status))
    return error(status, f"{message} {error_text}" if error_text else message)


def auth_error() -> Reply:
    """401 for a missing or wrong ``x-api-key`` (the key is not echoed)."""
    return error(401, "invalid x-api-key")


def invalid_json() -> Reply:
    """400 for a body that is not a JSON object."""
    return error(400, "There was an issue with the request body: invalid JSON")


def validate(endpoint: str, body: dict[str, Any]) -> Reply | None:
    """A 400 for a request missing what the real API requires, else ``None``."""
    needed = ("model", "messages", "max_tokens") if endpoint == "messages" else (
        "model", "messages")
    for name in needed:
        if name not in body:
            return error(400, f"{name}: Field required")
    if not isinstance(body["messages"], list) or not body["messages"]:
        return error(400, "messages: at least one message is required")
    if endpoint == "messages" and (not isinstance(body["max_tokens"], int)
                                   or body["max_tokens"] < 1):
        return error(400, "max_tokens: Input should be greater than or equal to 1")
    return None


def usage(ctx: Ctx) -> dict[str, Any]:
    """The full usage object of a message."""
    p = ctx.plan
    return {"input_tokens": p.prompt_tokens - p.cached_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": p.cached_tokens,
            "output_tokens": p.completion_tokens, "service_tier": "standard"}


def _stop(ctx: Ctx) -> str:
    return "max_tokens" if ctx.plan.truncated else "end_turn"


def messages(ctx: Ctx) -> Reply:
    """``POST /v1/messages``. Under ``no_usage`` every ``usage`` object is empty (``{}``:
    no usage fields, yet the SDK's stream helpers still work)."""
    msg: dict[str, Any] = {"id": new_id("msg_"), "type": "message", "role": "assistant",
                           "model": ctx.model}
    if not ctx.stream:
        out = {**msg, "content": [{"type": "text", "text": ctx.plan.text}],
               "stop_reason": _stop(ctx), "stop_sequence": None,
               "usage": usage(ctx) if ctx.usage else {}}
        return Reply.json(out, headers=_headers())
    start = {**msg, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {}}
    if ctx.usage:
        start["usage"] = {**usage(ctx), "output_tokens": min(1, ctx.plan.completion_tokens)}
    frames = [sse({"type": "message_start", "message": start}, "message_start"),
              sse({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}, "content_block_start"),
              sse({"type": "ping"}, "ping")]
    frames += [sse({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}}, "content_block_delta")
               for piece in ctx.plan.pieces]
    frames.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    frames.append(sse({"type": "message_delta",
                       "delta": {"stop_reason": _stop(ctx), "stop_sequence": None},
                       "usage": {"output_tokens": ctx.plan.completion_tokens} if ctx.usage
                       else {}}, "message_delta"))
    frames.append(sse({"type": "message_stop"}, "message_stop"))
    return Reply.stream(frames, _headers())


def count_tokens(body: dict[str, Any]) -> Reply:
    """``POST /v1/messages/count_tokens``."""
    return Reply.json({"input_tokens": prompt_tokens(body)}, headers=_headers())


def midstream_error(message: str) -> bytes:
    """The ``event: error`` Anthropic sends when a stream fails after it started."""
    return sse({"type": "error", "error": {"type": "overloaded_error", "message": message}},
               "error")


def models(ids: list[str]) -> Reply:
    """``GET /v1/models`` as Anthropic answers it (when ``anthropic-version`` is sent)."""
    data = [{"type": "model", "id": m, "display_name": m,
             "created_at": "2025-01-01T00:00:00Z"} for m in ids]
    return Reply.json({"data": data, "has_more": False,
                       "first_id": ids[0] if ids else None,
                       "last_id": ids[-1] if ids else None}, headers=_headers())

"""OpenAI wire format: chat completions, legacy completions, embeddings, the Responses
API, models, and OpenAI-shaped errors."""

from __future__ import annotations

import array
import base64
from typing import Any

from control.simulator.common import Ctx, new_id, now
from control.simulator.text import embedding_vector, prompt_tokens
from control.simulator.wire import Reply, phrase, sse

DONE = b"data: [DONE]\n\n"

_FAULT_MESSAGES = {
    400: ("Invalid request (simulated provider error).", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: ("The model does not exist or you do not have access to it.",
          "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests. Please try again later.", "requests",
          "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!",
          "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def _headers() -> list[tuple[str, str]]:
    return [("x-request-id", new_id("req_")), ("openai-processing-ms", "1")]


def error(status: int, message: str, type_: str = "invalid_request_error", *,
          param: str | None = None, code: str | None = None) -> Reply:
    """An error in OpenAI's format: ``{"error": {message, type, param, code}}``."""
    return Reply.json({"error": {"message": message, "type": type_, "param": param,
                                 "code": code}}, status, _headers())


def fault_error(status: int, error_text: str | None) -> Reply:
    """The error a ``status_<code>`` fault answers, with the planted error text."""
    default = (phrase(status), "server_error" if status >= 500 else "invalid_request_error",
               None)
    message, type_, code = _FAULT_MESSAGES.get(status, default)
    if error_text:
        message = f"{message} {error_text}"
    return error(status, message, type_, code=code)


def auth_error() -> Reply:
    """401 for a missing or wrong ``Authorization: Bearer`` key (the key is not echoed)."""
    return error(401, "Incorrect API key provided. You can find your API key at "
                 "https://platform.openai.com/account/api-keys.", code="invalid_api_key")


def invalid_json() -> Reply:
    """400 for a body that is not a JSON object."""
    return error(400, "We could not parse the JSON body of your request. (HINT: This likely "
                 "means you aren't using your HTTP library correctly. The OpenAI API expects "
                 "a JSON payload, but what was sent was not valid JSON.)")


_REQUIRED = {
    "chat": ("messages",),
    "completions": ("prompt",),
    "embeddings": ("input",),
    "responses": (),
}


def validate(endpoint: str, body: dict[str, Any]) -> Reply | None:
    """A 400 for a request missing what the real API requires, else ``None``."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return error(400, "you must provide a model parameter", param="model")
    for name in _REQUIRED.get(endpoint, ()):
        if name not in body:
            return error(400, f"Missing required parameter: '{name}'.", param=name,
                         code="missing_required_parameter")
    if endpoint == "chat" and not (isinstance(body["messages"], list) and body["messages"]):
        return error(400, "Invalid 'messages': empty array. Expected an array with minimum "
                     "length 1, but got an empty array instead.", param="messages",
                     code="empty_array")
    return None


def usage(ctx: Ctx) -> dict[str, Any]:
    """Chat / completions usage."""
    p = ctx.plan
    return {
        "prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens,
        "total_tokens": p.total_tokens,
        "prompt_tokens_details": {"cached_tokens": p.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def _wants_usage_chunk(ctx: Ctx) -> bool:
    opts = ctx.body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


def _finish(ctx: Ctx) -> str:
    return "length" if ctx.plan.truncated else "stop"


def chat(ctx: Ctx) -> Reply:
    """``POST /v1/chat/completions``."""
    cid, created = new_id("chatcmpl-"), now()
    base = {"id": cid, "object": "chat.completion", "created": created, "model": ctx.model,
            "service_tier": "default", "system_fingerprint": "fp_simulator"}
    if not ctx.stream:
        message = {"role": "assistant", "content": ctx.plan.text, "refusal": None,
                   "annotations": []}
        out = {**base, "choices": [{"index": 0, "message": message, "logprobs": None,
                                    "finish_reason": _finish(ctx)}]}
        if ctx.usage:
            out["usage"] = usage(ctx)
        return Reply.json(out, headers=_headers())
    base["object"] = "chat.completion.chunk"
    with_usage = _wants_usage_chunk(ctx) and ctx.usage
    extra = {"usage": None} if with_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}], **extra})

    frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
    frames += [chunk({"content": piece}) for piece in ctx.plan.pieces]
    frames.append(chunk({}, _finish(ctx)))
    if with_usage:
        frames.append(sse({**base, "choices": [], "usage": usage(ctx)}))
    frames.append(DONE)
    return Reply.stream(frames, _headers())


def completions(ctx: Ctx) -> Reply:
    """``POST /v1/completions`` (legacy): one choice whatever ``n`` or the prompt count."""
    base = {"id": new_id("cmpl-"), "object": "text_completion", "created": now(),
            "model": ctx.model, "system_fingerprint": "fp_simulator"}
    if not ctx.stream:
        out = {**base, "choices": [{"text": ctx.plan.text, "index": 0, "logprobs": None,
                                    "finish_reason": _finish(ctx)}]}
        if ctx.usage:
            out["usage"] = {k: v for k, v in usage(ctx).items() if not k.endswith("details")}
        return Reply.json(out, headers=_headers())
    frames = [sse({**base, "choices": [{"text": piece, "index": 0, "logprobs": None,
                                        "finish_reason": None}]})
              for piece in ctx.plan.pieces]
    frames.append(sse({**base, "choices": [{"text": "", "index": 0, "logprobs": None,
                                            "finish_reason": _finish(ctx)}]}))
    if _wants_usage_chunk(ctx) and ctx.usage:
        plain = {k: v for k, v in usage(ctx).items() if not k.endswith("details")}
        frames.append(sse({**base, "choices": [], "usage": plain}))
    frames.append(DONE)
    return Reply.stream(frames, _headers())


def _embedding_inputs(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(x, int) for x in value):
        return [value]
    return list(value) if isinstance(value, list) else [str(value)]


def embeddings(ctx: Ctx) -> Reply:
    """``POST /v1/embeddings``: float vectors, or base64 float32 with
    ``encoding_format: "base64"``."""
    dims = ctx.body.get("dimensions")
    dim = dims if isinstance(dims, int) and dims > 0 else ctx.embedding_dim
    b64 = ctx.body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(_embedding_inputs(ctx.body.get("input"))):
        vec = embedding_vector(item if isinstance(item, str) else repr(item), dim)
        value: Any = base64.b64encode(array.array("f", vec).tobytes()).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    out: dict[str, Any] = {"object": "list", "data": data, "model": ctx.model}
    if ctx.usage:
        tokens = prompt_tokens({"input": ctx.body.get("input")})
        out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return Reply.json(out, headers=_headers())


def _responses_usage(ctx: Ctx) -> dict[str, Any]:
    p = ctx.plan
    return {"input_tokens": p.prompt_tokens,
            "input_tokens_details": {"cached_tokens": p.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": p.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": p.total_tokens}


def _response_obj(ctx: Ctx, rid: str, created: int, status: str,
                  output: list[dict[str, Any]], final: bool) -> dict[str, Any]:
    body = ctx.body
    incomplete = status == "incomplete"
    return {
        "id": rid, "object": "response", "created_at": created, "status": status,
        "background": False, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
        "model": ctx.model, "output": output, "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
        "store": body.get("store", True), "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto",
        "tools": [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
        "usage": _responses_usage(ctx) if final and ctx.usage else None,
        "user": None, "metadata": body.get("metadata") or {},
    }


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def responses(ctx: Ctx) -> Reply:
    """``POST /v1/responses``: a message output item with one ``output_text`` part."""
    rid, mid, created = new_id("resp_"), new_id("msg_"), now()
    status = "incomplete" if ctx.plan.truncated else "completed"
    item = {"id": mid, "type": "message", "status": status, "role": "assistant",
            "content": [_part(ctx.plan.text)]}
    if not ctx.stream:
        return Reply.json(_response_obj(ctx, rid, created, status, [item], True),
                          headers=_headers())
    frames: list[bytes] = []

    def event(type_: str, **fields: Any) -> None:
        frames.append(sse({"type": type_, "sequence_number": len(frames), **fields}, type_))

    pending = _response_obj(ctx, rid, created, "in_progress", [], False)
    event("response.created", response=pending)
    event("response.in_progress", response=pending)
    where = {"item_id": mid, "output_index": 0, "content_index": 0}
    event("response.output_item.added", output_index=0,
          item={**item, "status": "in_progress", "content": []})
    event("response.content_part.added", **where, part=_part(""))
    for piece in ctx.plan.pieces:
        event("response.output_text.delta", **where, delta=piece, logprobs=[])
    event("response.output_text.done", **where, text=ctx.plan.text, logprobs=[])
    event("response.content_part.done", **where, part=_part(ctx.plan.text))
    event("response.output_item.done", output_index=0, item=item)
    event(f"response.{status}",
          response=_response_obj(ctx, rid, created, status, [item], True))
    return Reply.stream(frames, _headers())


def midstream_error(endpoint: str, message: str) -> bytes:
    """The frame a provider sends when a stream fails after it started."""
    if endpoint == "responses":
        return sse({"type": "error", "code": "server_error", "message": message,
                    "param": None, "sequence_number": 0}, "error")
    return sse({"error": {"message": message, "type": "server_error", "param": None,
                          "code": None}})


def models(ids: list[str]) -> Reply:
    """``GET /v1/models``."""
    created = 1_700_000_000
    return Reply.json({"object": "list", "data": [
        {"id": m, "object": "model", "created": created, "owned_by": "hushgate-simulator"}
        for m in ids]}, headers=_headers())

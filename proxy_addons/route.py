"""Admission, part 2 — route: parse the body, find the model in the catalog, check the key's scope.

Also answers ``GET /v1/models`` from the catalog, filtered by the key's allowed models.
The parsed body lives only inside this stage; what goes on is the rewritten upstream body
(``model`` replaced by the provider's name, ``stream_options.include_usage`` injected for
OpenAI streams) and a few numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from control.core.config import Config, Model
from control.core.keys import KeyPrincipal
from proxy_addons.state import Refusal

#: Where each endpoint's requested output limit lives in the body.
_MAX_TOKEN_FIELDS = {
    "chat.completions": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "messages": ("max_tokens",),
    "embeddings": (),
}
_USAGE_INJECTED = frozenset({"chat.completions", "completions"})
#: Fields asking for several generations, each billed for its output (OpenAI).
_CHOICE_FIELDS = {"chat.completions": ("n",), "completions": ("n", "best_of")}


@dataclass(frozen=True)
class RoutedRequest:
    model: Model
    stream: bool
    client_wants_usage: bool
    max_output_tokens: int
    upstream_body: bytes
    choices: int = 1  # generations billed: max(n, best_of)


def parse_body(raw: bytes | None) -> dict[str, Any]:
    """Strict UTF-8 JSON object. Raises Refusal (400)."""
    if not raw:
        raise Refusal(400, "invalid_json", "the request body is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "invalid_encoding", "the request body is not valid UTF-8") from None
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise Refusal(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "invalid_json", "the request body must be a JSON object")
    return body


def requested_output_tokens(endpoint: str, body: dict[str, Any], model: Model) -> int:
    """The worst-case output: the request's limit, capped by the model's, else the model's."""
    if endpoint == "embeddings":
        return 0
    for name in _MAX_TOKEN_FIELDS.get(endpoint, ()):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            if value <= 0:
                raise Refusal(400, "invalid_request", f"{name} must be positive")
            return min(value, model.max_output_tokens)
    return model.max_output_tokens


def requested_choices(endpoint: str, body: dict[str, Any]) -> int:
    """How many generations the request asks for (``n`` / ``best_of``), at least 1."""
    choices = 1
    for name in _CHOICE_FIELDS.get(endpoint, ()):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise Refusal(400, "invalid_request", f"{name} must be a positive integer",
                          param=name)
        choices = max(choices, value)
    return choices


def route(config: Config, endpoint: str, api_format: str, raw: bytes | None,
          principal: KeyPrincipal | None) -> RoutedRequest:
    """Decide where a request goes and what is sent. Pure; raises Refusal."""
    body = parse_body(raw)
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise Refusal(400, "missing_model", "the request names no model")
    model = config.models.get(name)
    if (model is None or model.provider.api_format != api_format
            or endpoint not in model.endpoints):
        raise Refusal(404, "model_not_found",
                      f"the model {name[:100]!r} does not exist or is not available on this "
                      "endpoint; GET /v1/models lists the models this key can use",
                      param="model")
    if principal is not None and not principal.allows_model(name):
        raise Refusal(403, "model_not_allowed", "this API key may not use this model")
    stream = body.get("stream") is True
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Refusal(400, "invalid_request", "stream must be a boolean")
    wants_usage = False
    changed = model.upstream_model != name
    if stream and endpoint in _USAGE_INJECTED:
        opts = body.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise Refusal(400, "invalid_request", "stream_options must be an object")
        wants_usage = bool(opts and opts.get("include_usage") is True)
        if not wants_usage:
            body["stream_options"] = {**(opts or {}), "include_usage": True}
            changed = True
    out_tokens = requested_output_tokens(endpoint, body, model)
    choices = requested_choices(endpoint, body)
    body["model"] = model.upstream_model
    upstream = json.dumps(body, ensure_ascii=False).encode() if changed else raw
    assert upstream is not None
    return RoutedRequest(model, stream, wants_usage, out_tokens, upstream, choices)


def models_list(config: Config, principal: KeyPrincipal, api_format: str) -> dict[str, Any]:
    """``GET /v1/models``: the catalog, filtered by the key's scope, in the client's format."""
    names = [m for m in config.models if principal.allows_model(m)]
    if api_format == "anthropic":
        names = [m for m in names if config.models[m].provider.api_format == "anthropic"]
        data = [{"type": "model", "id": n, "display_name": n,
                 "created_at": "2025-01-01T00:00:00Z"} for n in names]
        return {"data": data, "has_more": False, "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None}
    data = [{"id": n, "object": "model", "created": 0,
             "owned_by": config.models[n].provider.name} for n in names]
    return {"object": "list", "data": data}

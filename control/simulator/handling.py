"""One request: record it, check the key, pick a fault, route it, answer it."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from control.simulator import anthropic_format, faults, openai_format
from control.simulator.common import Ctx
from control.simulator.recording import SimRequest
from control.simulator.text import Markers, marker_text, plan
from control.simulator.wire import Incoming, Reply, Wire

if TYPE_CHECKING:
    from control.simulator.server import Simulator

log = logging.getLogger("control.simulator")


@dataclass(frozen=True)
class Route:
    """Where a request goes: provider format and endpoint name."""

    api: str  # "openai" | "anthropic" | "any"
    endpoint: str
    method: str


ROUTES: dict[str, Route] = {
    "/v1/chat/completions": Route("openai", "chat", "POST"),
    "/v1/completions": Route("openai", "completions", "POST"),
    "/v1/embeddings": Route("openai", "embeddings", "POST"),
    "/v1/responses": Route("openai", "responses", "POST"),
    "/v1/models": Route("any", "models", "GET"),
    "/v1/messages": Route("anthropic", "messages", "POST"),
    "/v1/messages/count_tokens": Route("anthropic", "count_tokens", "POST"),
    "/health": Route("any", "health", "GET"),
}

_GENERATION = {"chat": openai_format.chat, "completions": openai_format.completions,
               "embeddings": openai_format.embeddings, "responses": openai_format.responses,
               "messages": anthropic_format.messages}


def _headers(items: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in items:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _api(path: str, headers: dict[str, str]) -> str:
    route = ROUTES.get(path)
    if route is not None and route.api != "any":
        return route.api
    return "anthropic" if "anthropic-version" in headers or path.startswith(
        "/v1/messages") else "openai"


def _fmt(api: str) -> Any:
    return anthropic_format if api == "anthropic" else openai_format


def _key_ok(sim: Simulator, api: str, req: SimRequest) -> bool:
    if not sim.require_key:
        return True
    bearer = req.header("authorization") == f"Bearer {sim.require_key}"
    if api == "anthropic":  # x-api-key, or Bearer as the anthropic SDK now sends it
        return bearer or req.header("x-api-key") == sim.require_key
    return bearer


def _garbage(stream: bool) -> Reply:
    """A 200 whose body is not what the client expects (invalid UTF-8, not JSON)."""
    junk = b'{"id": "sim-\xff\xfe\x00 <<garbage>> \x80\x81 not json'
    if stream:
        return Reply.stream([b"data: " + junk + b"\n\n", b"\x00\xff\xfe\r\n\r\n",
                             b"data: [DONE]\n\n"])
    return Reply(status=200, body=junk)


def _parse(raw: bytes) -> tuple[Any, bool]:
    """(parsed JSON or None, whether the body is valid JSON)."""
    if not raw:
        return None, False
    try:
        return json.loads(raw), True
    except ValueError:
        return None, False


async def respond(sim: Simulator, wire: Wire, incoming: Incoming) -> bool:
    """Answer one request; ``False`` when the connection must be closed afterwards."""
    path, _, query = incoming.target.partition("?")
    path = path.rstrip("/") or "/"
    headers = _headers(incoming.headers)
    body, _ = _parse(incoming.body)
    route = ROUTES.get(path)
    api = _api(path, headers)
    fmt = _fmt(api)
    markers = Markers.parse(marker_text(body))
    reply: Reply | None = None
    fault: str | None = None
    try:
        fault = faults.select(headers.get(faults.FAULT_HEADER), markers.fault, sim.fault_switch)
    except faults.UnknownFault as exc:
        reply = fmt.error(400, str(exc))
    req = SimRequest(incoming.method, path, query, headers, body, incoming.body, fault,
                     route.endpoint if route else None)
    sim.request_log.add(req)

    if reply is None:
        reply = _precheck(sim, req, route, api)
    if reply is None and fault == faults.TIMEOUT:
        _trace(req, "hang")
        await wire.wait_for_client_close()
        return False
    if reply is None and fault == faults.CLOSE_IMMEDIATELY:
        _trace(req, "close")
        await wire.close()
        return False
    if reply is None:
        reply = _answer(sim, req, route, fmt, markers)

    if sim.latency_ms > 0:
        await asyncio.sleep(sim.latency_ms / 1000)
    delay = sim.slow_chunk_delay_ms if fault == faults.SLOW_STREAM else sim.chunk_delay_ms
    if fault == faults.SLOW_STREAM and reply.frames is None:
        await asyncio.sleep(delay / 1000)
    cut = fault == faults.CUT_MIDSTREAM and reply.status == 200
    _trace(req, str(reply.status) + (" cut" if cut else ""))
    await wire.send(reply, chunk_delay=delay / 1000, cut=cut)
    return not cut


def _precheck(sim: Simulator, req: SimRequest, route: Route | None, api: str) -> Reply | None:
    """404 / 405 / 401, before any fault applies."""
    fmt = _fmt(api)
    if route is None:
        return fmt.error(404, f"Invalid URL ({req.method} {req.path})"
                         if api == "openai" else "Not found")
    if req.method != route.method:
        return fmt.error(405, f"Method {req.method} not allowed on {req.path}")
    if route.endpoint != "health" and not _key_ok(sim, api, req):
        return fmt.auth_error()
    return None


def _answer(sim: Simulator, req: SimRequest, route: Route | None, fmt: Any,
            markers: Markers) -> Reply:
    """The reply once the request passed the key check and no connection fault applies."""
    assert route is not None
    fault = req.fault
    body = req.body
    stream = isinstance(body, dict) and body.get("stream") is True
    status = faults.status_of(fault)
    if status is not None:
        return fmt.fault_error(status, markers.error_text)
    if fault == faults.GARBAGE:
        return _garbage(stream)
    if route.endpoint == "health":
        return Reply.json({"status": "ok"})
    if route.endpoint == "models":
        return fmt.models(list(sim.models))
    if not isinstance(body, dict):
        return fmt.invalid_json()
    invalid = fmt.validate(route.endpoint, body)
    if invalid is not None:
        return invalid
    if route.endpoint == "count_tokens":
        return anthropic_format.count_tokens(body)
    if fault == faults.ERROR_MIDSTREAM and not stream:
        return fmt.fault_error(500, markers.error_text)
    ctx = Ctx(body, plan(body, markers, chunks=sim.chunks, cached_tokens=sim.cached_tokens),
              stream=stream and route.endpoint != "embeddings",
              usage=fault != faults.NO_USAGE, embedding_dim=sim.embedding_dim)
    reply = _GENERATION[route.endpoint](ctx)
    if fault == faults.ERROR_MIDSTREAM and reply.frames:
        message = f"Overloaded (simulated). {markers.error_text or ''}".strip()
        frame = (anthropic_format.midstream_error(message) if fmt is anthropic_format
                 else openai_format.midstream_error(route.endpoint, message))
        reply.frames = reply.frames[: max(1, len(reply.frames) // 2)] + [frame]
    return reply


def _trace(req: SimRequest, outcome: str) -> None:
    """Debug log line: method, endpoint, outcome, fault. Never bodies, headers or paths."""
    log.debug("%s %s -> %s (fault=%s)", req.method, req.endpoint or "<unrouted>", outcome,
              req.fault)

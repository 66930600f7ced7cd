"""The per-flow state every step of the pipeline reads and writes.

One typed object lives in ``flow.metadata[STATE_KEY]``. Steps talk through it, never through
each other. The gate flags (``authenticated``, ``routed``, ``reserved``) start ``False`` and
only the step that checked something may set its flag: the forward gate refuses any flow
whose flags aren't all set (default deny).

A step signals a refusal by raising :class:`Refusal`; :func:`step` turns it (and any other
exception) into a hushgate error response in the endpoint's wire format. Exceptions are
logged by type name only: their text could carry request content.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mitmproxy import http

if TYPE_CHECKING:
    from control.core.config import Model
    from control.core.keys import KeyPrincipal
    from proxy_addons.sse import StreamTap

log = logging.getLogger("hushgate.proxy")

STATE_KEY = "hushgate"


class Refusal(Exception):  # noqa: N818 - a refusal is an outcome, not a bug
    """A request hushgate answers itself: ``status`` + a safe ``message`` + an error code."""

    def __init__(self, status: int, code: str, message: str, *,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(slots=True)
class Usage:
    """Token counts. ``input_tokens`` includes ``cached_tokens``."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    seen: bool = False  # the provider reported usage (vs. estimated)


@dataclass(slots=True)
class FlowState:
    """Everything hushgate knows about one request: metadata only, never content."""

    request_id: str
    time: datetime
    started: float = field(default_factory=time.monotonic)
    method: str = ""
    endpoint: str = "other"
    api_format: str = "openai"  # wire format of errors for this request
    client_ip: str | None = None
    user_agent: str | None = None
    request_bytes: int = 0
    # authenticate
    authenticated: bool = False
    key_id: str | None = None
    account_id: str | None = None
    principal: KeyPrincipal | None = None
    # route
    routed: bool = False
    model: Model | None = None
    stream: bool = False
    client_wants_usage: bool = False
    max_output_tokens: int = 0
    upstream_body: bytes | None = None  # the rewritten body; dropped once forwarded
    # reserve
    reserved: bool = False
    hold_id: str | None = None
    hold_amount: int = 0
    input_estimate: int = 0
    # forward / response
    forwarded: bool = False
    forwarded_at: float | None = None
    upstream_timer: Any = None  # asyncio.TimerHandle of the upstream timeout; cancelled at the
    # response headers or the error (a pending timer would keep the whole flow alive)
    upstream_status: int | None = None
    first_byte_at: float | None = None
    tap: StreamTap | None = None
    usage: Usage = field(default_factory=Usage)
    estimated: bool = False
    response_bytes: int = 0
    # outcome
    status: int = 0
    error_type: str | None = None
    cost: int = 0
    finished: bool = False
    done_at: float | None = None

    def refuse(self, status: int, code: str) -> None:
        self.status, self.error_type = status, code

    @property
    def may_forward(self) -> bool:
        """The gate: every step before forwarding positively allowed this request."""
        return self.authenticated and self.routed and self.reserved and self.model is not None


def get_state(flow: http.HTTPFlow) -> FlowState | None:
    return flow.metadata.get(STATE_KEY)


Hook = Callable[[Any, http.HTTPFlow, FlowState], Awaitable[None] | None]


def request_step(fn: Hook) -> Callable[[Any, http.HTTPFlow], Awaitable[None]]:
    """Wrap a request-phase hook: skip flows already answered; map failures to errors."""

    @functools.wraps(fn)
    async def wrapper(self: Any, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        if state is None or flow.response is not None or flow.error is not None:
            return
        try:
            result = fn(self, flow, state)
            if result is not None:
                await result
        except Refusal as refusal:
            answer(flow, state, refusal)
        except Exception as exc:  # noqa: BLE001 - any failure must fail closed
            answer(flow, state, refusal_for(exc, fn.__qualname__))

    return wrapper


def refusal_for(exc: BaseException, where: str) -> Refusal:
    """A safe refusal for an unexpected exception (its text is never shown or logged)."""
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, OperationalError | DBAPIError | PoolTimeout | ConnectionError):
        log.error("hushgate: database unavailable in %s (%s)", where, type(exc).__name__)
        return Refusal(503, "service_unavailable",
                       "hushgate is temporarily unavailable; the request was not forwarded")
    log.error("hushgate: step %s failed (%s)", where, type(exc).__name__)
    return Refusal(500, "internal_error",
                   "hushgate could not process this request; it was not forwarded")


def answer(flow: http.HTTPFlow, state: FlowState, refusal: Refusal) -> None:
    """Answer the client with a hushgate error; the flow never reaches a provider."""
    from proxy_addons.wire import error_response

    state.refuse(refusal.status, refusal.code)
    flow.response = error_response(state.api_format, refusal.status, refusal.code,
                                   refusal.message, request_id=state.request_id,
                                   retry_after=refusal.retry_after)

"""The Gateway: the one mitmproxy addon that carries a request through hushgate.

Each hook is the request's life at that moment, as calls to plain stage functions:

    requestheaders  intake: state, header checks (health and metrics answered here)
    request         admit (authenticate -> route -> reserve) -> forward, or refuse
    responseheaders meter the headers (stream tap) -> scrub the request
    response        meter the body -> price -> record (durable before the last byte)
    error           classify the end -> price what was delivered -> decide the error
                    answer (or the stream's terminal event) -> record

Only the Gateway reads or writes ``flow.metadata``. Before forwarding, default deny is
structural: forward takes an :class:`~proxy_addons.state.Admission`, which only admission
builds. After forwarding, mitmproxy would log a failing hook and carry on, so every stage
runs under :meth:`Gateway._guard`: a failure is charged per the policy in
:mod:`proxy_addons.pricing` (never free, the hold always settled or released, the request
always recorded). A flow without hushgate state is refused, never passed.

Record is where the money becomes real: the request's charge (0 if it was refused or
failed) and its record go to ``control.core.proxy_money.ProxyMoney.finish``, and the hook
awaits the group commit (journal fsync or database transaction) before it returns, which is
before mitmproxy releases the end of the answer to the client. So a request whose last byte
reached the client is charged exactly once, even if the process is killed a moment later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mitmproxy import http

from control.core import metrics
from proxy_addons import errorpage
from proxy_addons.admission import admit
from proxy_addons.authenticate import Authenticator
from proxy_addons.forward import Watchdog, forward, scrub_request
from proxy_addons.intake import (
    HEALTH_PATH,
    METRICS_PATH,
    asked_for_stream,
    intake,
    new_state,
)
from proxy_addons.meter import classify_error, meter_body, meter_headers
from proxy_addons.observer import call
from proxy_addons.pricing import final_usage, usage_cost
from proxy_addons.record import build_record, minimal_record
from proxy_addons.services import Services
from proxy_addons.state import FlowState, Refusal, is_database_error, refusal_for
from proxy_addons.wire import error_response, guess_format, stream_error_event

log = logging.getLogger("hushgate.proxy")

STATE_KEY = "hushgate"
#: The stages in the order a forwarded request goes through them (pinned by a test).
STAGES = ("intake", "admit", "forward", "meter_headers", "meter_body", "price", "record")


class Gateway:
    def __init__(self, services: Services, observer: Any = None) -> None:
        self.services = services
        self.observer = observer if observer is not None else services.observer
        self.authenticator = Authenticator(services)
        proxy = services.config.proxy
        self.first_byte_timeout = proxy["upstream_timeout_ms"] / 1000
        self.stream_idle_timeout = proxy["stream_idle_timeout_ms"] / 1000
        self.max_request_seconds = float(proxy["max_request_seconds"])

    def load(self, _loader: object) -> None:
        errorpage.install()  # mitmproxy's own error answers in hushgate's wire formats

    # -- the request's life ---------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if STATE_KEY in flow.metadata:
            return
        req = flow.request
        if req.method in ("GET", "HEAD") and req.path in (HEALTH_PATH, METRICS_PATH):
            flow.metadata[STATE_KEY] = None  # hushgate's own answer, no request record
            flow.response = self._status_page(flow)
            return
        state = new_state(self.services, flow)
        flow.metadata[STATE_KEY] = state
        self.services.in_flight += 1
        with self._refusing(flow, state, "intake"):
            intake(self.services, flow, state)

    async def request(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        if state is None or flow.response is not None or flow.error is not None:
            return
        state.request_bytes = len(flow.request.raw_content or b"")
        with self._refusing(flow, state, "admit"):
            if state.deferred is not None:
                raise state.deferred
            admitted = await admit(self.services, self.authenticator, flow.request, state)
            if state.reservation is not None:
                self.services.holds += 1
                call(self.observer, "holds_in_flight", self.services.holds)
            if isinstance(admitted, http.Response):
                flow.response, state.status = admitted, 200
                return
            forward(flow, admitted)
            state.forwarded, state.forwarded_at = True, time.monotonic()
            state.watchdog = Watchdog(flow, state, first_byte=self.first_byte_timeout,
                                      idle=self.stream_idle_timeout,
                                      total=self.max_request_seconds)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        if state is None or not state.forwarded or flow.response is None:
            return
        if not self._guard(state, "meter_headers", meter_headers, flow.response, state):
            flow.response.stream = False  # withheld: replaced by an error in `response`
        scrub_request(flow)  # already sent upstream

    async def response(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        if state is None or state.finished:
            return
        self._ended(state)
        if state.forwarded and state.failed_stage is None:
            self._guard(state, "meter_body", meter_body, flow, state)
        if state.forwarded and state.failed_stage is not None and state.tap is None:
            self._withhold(flow, state)  # nothing of the answer reached the client
        if not state.status and flow.response is not None:
            state.status = flow.response.status_code
        self._price(state, complete=True)
        if not await self._record(state):
            self._undurable(flow, state)
        self._close_if_asked(flow, state)
        scrub_request(flow)

    async def error(self, flow: http.HTTPFlow) -> None:
        state = self._state(flow)
        if state is None or state.finished:
            return
        self._ended(state)
        message = flow.error.msg if flow.error else ""
        tap = state.tap
        if tap is not None and tap.ended and message.startswith("Client disconnected"):
            # The client hung up after the stream's last event (SDKs stop at [DONE] /
            # message_stop): everything was delivered, so it is a normal completion.
            state.status, state.response_bytes = state.upstream_status or 200, tap.delivered
            self._price(state, complete=True)
        else:
            if not self._guard(state, "classify", self._classify, state, message):
                state.refuse(502, "internal_error")
            if tap is not None and (tap.delivered or tap.usage.seen):
                self._price(state, complete=False)
        self._guard(state, "error_answer", self._decide_answer, state)
        await self._record(state)
        scrub_request(flow)
        if flow.response is not None:
            flow.response.content = None

    # -- stages' glue ---------------------------------------------------------------------

    @staticmethod
    def _classify(state: FlowState, message: str) -> None:
        state.status, state.error_type = classify_error(state, message)
        if state.tap is not None:
            state.response_bytes = state.tap.delivered

    @staticmethod
    def _decide_answer(state: FlowState) -> None:
        """What mitmproxy's error answer (or a started stream's end) says for this flow."""
        tail = None
        if state.tap is not None and not state.tap.ended and state.status >= 500:
            tail = stream_error_event(state.api_format, state.status,
                                      state.error_type or "upstream_cut")
        errorpage.decide(state.status, state.error_type, state.request_id, state.api_format,
                         tail)

    def _price(self, state: FlowState, *, complete: bool) -> None:
        """Price what was delivered. Never free: if pricing fails, or the stream tap failed,
        the hold's worst case is charged, estimated, as ``internal_error``."""
        if not state.forwarded or state.model is None:
            return
        delivered = state.tap is not None or (state.status < 400 and state.upstream_status
                                              is not None and state.upstream_status < 400)
        if not delivered:
            return  # refused, provider error, or answer withheld: the hold is released
        if state.tap is not None and state.tap.broken:
            self._failed(state, "stream_tap", None)
        if state.failed_stage is None and self._guard(state, "price", self._charge, state,
                                                      complete):
            return
        state.cost, state.estimated = state.hold_amount, True

    @staticmethod
    def _charge(state: FlowState, complete: bool) -> None:
        assert state.model is not None
        tap = state.tap
        reported = tap.usage if tap is not None else state.usage
        chars = tap.text if tap is not None else state.text_chars
        usage, estimated = final_usage(reported, text_chars=chars,
                                       request_bytes=state.request_bytes, complete=complete,
                                       embeddings=state.endpoint == "embeddings")
        state.usage, state.estimated = usage, estimated
        state.cost = usage_cost(state.model.prices, usage)
        if complete or state.tap is None:  # a cut stream keeps its error status
            state.status = state.upstream_status or 200

    async def _record(self, state: FlowState) -> bool:
        """Exactly one record per request with its charge (the reservation's worth of it,
        or 0: a refused or failed request is never charged), durable when this returns
        True. False: it could not be made durable (the answer must not end cleanly)."""
        state.finished = True
        reservation = state.reservation
        if reservation is not None:
            self.services.holds -= 1
            call(self.observer, "holds_in_flight", self.services.holds)
        try:
            record = build_record(state)
        except Exception as exc:  # noqa: BLE001 - the request is recorded anyway
            log.error("hushgate: stage record failed (%s)", type(exc).__name__)
            record = minimal_record(state)
        charge = state.cost if reservation is not None else 0
        durable = True
        try:
            await asyncio.wrap_future(self.services.money.finish(
                reservation, record, charge, estimated=state.estimated))
        except Exception as exc:  # noqa: BLE001 - fail closed: the answer is cut
            log.error("hushgate: outcome of request %s not durable (%s)", state.request_id,
                      type(exc).__name__)
            call(self.observer, "db_error")
            durable = False
        finally:
            self.services.in_flight -= 1
        self._count_tokens(state)
        return durable

    def _count_tokens(self, state: FlowState) -> None:
        principal = state.principal
        if principal is not None and principal.tpm_limit is not None:
            extra = state.usage.output_tokens + max(
                0, state.usage.input_tokens - state.hold_input_tokens)
            self._guard(state, "tpm_count", self.services.count, self.services.tpm,
                        principal.key_id, extra)

    # -- failure handling -----------------------------------------------------------------

    def _guard(self, state: FlowState, stage: str, fn: Any, *args: Any) -> bool:
        """Run a stage after forwarding; on failure, mark the request per the policy."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - fail closed, see the module docstring
            self._failed(state, stage, exc)
            return False
        return True

    def _failed(self, state: FlowState, stage: str, exc: BaseException | None) -> None:
        log.error("hushgate: stage %s failed (%s)", stage,
                  type(exc).__name__ if exc is not None else "stream tap")
        if exc is not None and is_database_error(exc):
            call(self.observer, "db_error")
        state.failed_stage = state.failed_stage or stage
        state.error_type = "internal_error"

    @staticmethod
    def _undurable(flow: http.HTTPFlow, state: FlowState) -> None:
        """The charge could not be made durable: the client must not see a complete answer
        (a JSON answer becomes a 502; a stream is cut before its end)."""
        if state.tap is not None:
            flow.kill()
            return
        flow.response = error_response(state.api_format, 502, "internal_error",
                                       "hushgate could not complete this request",
                                       request_id=state.request_id)

    @staticmethod
    def _withhold(flow: http.HTTPFlow, state: FlowState) -> None:
        state.refuse(502, "internal_error")
        flow.response = error_response(state.api_format, 502, "internal_error",
                                       "hushgate could not complete this request",
                                       request_id=state.request_id)

    def _refusing(self, flow: http.HTTPFlow, state: FlowState, stage: str) -> _Refusing:
        return _Refusing(self, flow, state, stage)

    def refuse(self, flow: http.HTTPFlow, state: FlowState, refusal: Refusal) -> None:
        """Answer the client with a hushgate error; the flow never reaches a provider."""
        state.refuse(refusal.status, refusal.code)
        if not state.stream:
            state.stream = asked_for_stream(flow.request.raw_content)
        flow.response = error_response(state.api_format, refusal.status, refusal.code,
                                       refusal.message, request_id=state.request_id,
                                       retry_after=refusal.retry_after,
                                       details=refusal.details, param=refusal.param)
        self._close_if_asked(flow, state)

    # -- helpers --------------------------------------------------------------------------

    def _state(self, flow: http.HTTPFlow) -> FlowState | None:
        """The flow's state; a flow hushgate did not take in is refused, never passed."""
        if STATE_KEY not in flow.metadata:
            log.error("hushgate: refused a flow with no hushgate state")
            flow.metadata[STATE_KEY] = None
            if flow.response is None and flow.error is None:
                flow.response = error_response(guess_format(flow.request.headers), 500,
                                               "internal_error", "hushgate could not "
                                               "process this request; it was not forwarded")
            return None
        return flow.metadata[STATE_KEY]

    @staticmethod
    def _ended(state: FlowState) -> None:
        state.done_at = time.monotonic()
        if state.watchdog is not None:
            state.watchdog.cancel()
            state.watchdog = None

    @staticmethod
    def _close_if_asked(flow: http.HTTPFlow, state: FlowState) -> None:
        """RFC 9112 §9.6: the client sent ``Connection: close``; mitmproxy decides from the
        request headers, which hushgate replaced, so it is said on the response."""
        if state.client_close and flow.response is not None:
            flow.response.headers["connection"] = "close"

    def _status_page(self, flow: http.HTTPFlow) -> http.Response:
        headers = {"cache-control": "no-store"}
        render = getattr(self.observer, "render", None)
        if flow.request.path == METRICS_PATH:
            if render is None:
                return http.Response.make(404, b"", headers)
            peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
            if not metrics.scrape_allowed(self.services.config, peer, flow.request.headers):
                return http.Response.make(403, metrics.REFUSED.encode(),
                                          {**headers, "content-type": "text/plain"})
            body, content_type = render()
            return http.Response.make(200, body, {**headers, "content-type": content_type})
        ok = self.services.alive
        body = b'{"status":"ok"}' if ok else b'{"status":"unavailable"}'
        return http.Response.make(200 if ok else 503, body,
                                  {**headers, "content-type": "application/json"})


class _Refusing:
    """``with``: a Refusal (or any failure) in a request-phase stage answers the client."""

    __slots__ = ("gateway", "flow", "state", "stage")

    def __init__(self, gateway: Gateway, flow: http.HTTPFlow, state: FlowState,
                 stage: str) -> None:
        self.gateway, self.flow, self.state, self.stage = gateway, flow, state, stage

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        if not isinstance(exc, Refusal):
            if is_database_error(exc):
                call(self.gateway.observer, "db_error")
            exc = refusal_for(exc, self.stage)
        self.gateway.refuse(self.flow, self.state, exc)
        return True

"""Step 6 — settle: decide what the request costs once it has ended (or failed).

Charging policy (documented in the README):

* **Provider usage reported** — charged exactly: ``input - cached`` at the input price,
  ``cached`` at the cached-input price, ``output`` at the output price.
* **Stream ended without usage** — estimated and marked ``estimated: true`` (never zero):
  input ``ceil(request bytes / 4)`` tokens, output ``ceil(generated characters / 4)``.
* **Client disconnected mid-stream** — charged for what was delivered: usage seen so far
  (Anthropic's ``message_start``), output from the delivered text (chars / 4), estimated.
  Recorded with status 499, ``client_disconnected``.
* **Upstream cut mid-stream** — charged for what arrived, the same way; recorded with status
  502, ``upstream_cut``.
* **Refused, provider error (>= 400), unreachable or timed-out provider** — nothing charged;
  the hold is released.

The charge is computed here, in the hook, from numbers only; the database work (settle or
release the hold) is done by the background writer, never in the hook.
"""

from __future__ import annotations

import time

from mitmproxy import http

from control.core.config import Prices
from control.core.money import cost_of
from proxy_addons.sse import tokens_from_chars
from proxy_addons.state import FlowState, Usage, get_state


def usage_cost(prices: Prices, usage: Usage) -> int:
    cached = min(usage.cached_tokens, usage.input_tokens)
    return (cost_of(usage.input_tokens - cached, prices.input)
            + cost_of(cached, prices.cached_input)
            + cost_of(usage.output_tokens, prices.output))


def estimate_input(request_bytes: int) -> int:
    return max(1, -(-request_bytes // 4))


def classify_error(state: FlowState, message: str) -> tuple[int, str]:
    """(status, error type) of a flow that ended with an error. Never keeps the message."""
    if state.error_type == "upstream_timeout":
        return 504, "upstream_timeout"
    if message.startswith("Client disconnected"):
        return 499, "client_disconnected"
    if "body_size_limit" in message:
        return (413, "request_too_large") if state.upstream_status is None else (
            502, "response_too_large")
    if not state.forwarded:
        return 400, "invalid_request"
    if state.upstream_status is None:
        return 502, "upstream_unreachable"
    return 502, "upstream_cut"


def final_usage(state: FlowState, *, complete: bool) -> tuple[Usage, bool]:
    """The usage to charge and whether it is estimated."""
    tap = state.tap
    reported = tap.usage if tap is not None else Usage()
    if reported.seen and complete and (reported.output_tokens or state.endpoint == "embeddings"
                                       or not (tap and tap.text)):
        return reported, False
    text_tokens = tokens_from_chars(tap.text) if tap is not None else 0
    usage = Usage(reported.input_tokens or estimate_input(state.request_bytes),
                  max(reported.output_tokens, text_tokens), reported.cached_tokens, seen=False)
    return usage, True


class Settle:
    def response(self, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        if state is None or state.finished:
            return
        state.done_at = time.monotonic()
        if flow.response is not None and not state.status:
            state.status = flow.response.status_code
        if state.tap is not None:
            state.response_bytes = state.tap.delivered
        elif flow.response is not None:
            state.response_bytes = len(flow.response.raw_content or b"")
        if not state.forwarded or state.tap is None or (state.upstream_status or 0) >= 400:
            return  # nothing to charge: the hold (if any) is released
        state.status = state.upstream_status or 200
        self._charge(state, complete=True)

    def error(self, flow: http.HTTPFlow) -> None:
        state = get_state(flow)
        if state is None or state.finished:
            return
        state.done_at = time.monotonic()
        message = flow.error.msg if flow.error else ""
        tap = state.tap
        if tap is not None and tap.ended and message.startswith("Client disconnected"):
            # The client hung up after the stream's last event (SDKs stop at [DONE] /
            # message_stop): everything was delivered, so it is a normal completion.
            state.status, state.response_bytes = state.upstream_status or 200, tap.delivered
            self._charge(state, complete=True)
            return
        state.status, state.error_type = classify_error(state, message)
        if state.tap is not None:
            state.response_bytes = state.tap.delivered
            if state.tap.delivered or state.tap.usage.seen:
                self._charge(state, complete=False)

    @staticmethod
    def _charge(state: FlowState, *, complete: bool) -> None:
        assert state.model is not None
        usage, estimated = final_usage(state, complete=complete)
        state.usage, state.estimated = usage, estimated
        state.cost = usage_cost(state.model.prices, usage)

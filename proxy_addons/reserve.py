"""Step 3 — reserve: hold the worst-case cost before anything is forwarded.

Worst case = input estimated from the body size (``ceil(bytes / 3)`` tokens: generous, JSON
framing counts too) at the input price + the request's output limit (capped by the model's
``max_output_tokens``) at the output price. The hold is taken atomically by
``control.core.wallet.reserve`` in its own transaction on a worker thread: 402 if the wallet
(``insufficient_funds``) or the key's budget (``budget_exceeded``) can't cover it. The
per-key tokens-per-minute limit is checked here too (429 with ``Retry-After``).
"""

from __future__ import annotations

from mitmproxy import http

from control.core import wallet
from control.core.config import Prices
from control.core.errors import BudgetExceeded, InsufficientFunds
from control.core.money import cost_of
from proxy_addons.services import Services
from proxy_addons.state import FlowState, Refusal, request_step


def input_estimate(request_bytes: int) -> int:
    """Worst-case input tokens for the hold: one token per 3 bytes of body, at least 1."""
    return max(1, -(-request_bytes // 3))


def worst_case_cost(prices: Prices, input_tokens: int, output_tokens: int) -> int:
    return cost_of(input_tokens, prices.input) + cost_of(output_tokens, prices.output)


class Reserve:
    def __init__(self, services: Services) -> None:
        self.services = services

    @request_step
    async def request(self, flow: http.HTTPFlow, state: FlowState) -> None:
        if not (state.authenticated and state.routed) or state.model is None:
            return  # the gate refuses it
        principal = state.principal
        assert principal is not None
        state.input_estimate = input_estimate(state.request_bytes)
        if principal.tpm_limit is not None:
            wait = await self.services.acquire(self.services.tpm, principal.key_id,
                                               principal.tpm_limit, state.input_estimate)
            if wait is not None:
                raise Refusal(429, "rate_limited", "this API key's tokens-per-minute limit "
                              "is reached", retry_after=wait)
        amount = worst_case_cost(state.model.prices, state.input_estimate,
                                 state.max_output_tokens)
        try:
            state.hold_id = await self.services.blocking(
                self._reserve, principal.account_id, amount, principal.key_id, state.request_id)
        except InsufficientFunds:
            raise Refusal(402, "insufficient_funds", "insufficient balance for this request "
                          "(its worst-case cost is held before forwarding)") from None
        except BudgetExceeded:
            raise Refusal(402, "budget_exceeded", "this API key's budget is exhausted") from None
        state.hold_amount = amount
        state.reserved = True

    def _reserve(self, account_id: str, amount: int, key_id: str, request_id: str) -> str:
        with self.services.write_transaction() as session:
            hold = wallet.reserve(session, account_id, amount, key_id=key_id,
                                  request_id=request_id,
                                  ttl_seconds=self.services.config.wallet["hold_ttl_seconds"])
            return hold.id

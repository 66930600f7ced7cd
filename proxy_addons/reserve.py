"""Admission, part 3 — reserve: hold the worst-case cost before anything is forwarded.

Worst case (:func:`proxy_addons.pricing.worst_case_cost`): the input estimate for the hold
(:func:`~proxy_addons.pricing.hold_input_tokens`) at the input price + the request's output
limit (capped by the model's ``max_output_tokens``) for each requested generation (``n`` /
``best_of``) at the output price.

The reservation is taken by ``control.core.proxy_money.ProxyMoney``: in memory, inside this
process's balance lease for the account (no database, no thread hop), or, when the lease
can't cover it (cold account, the end of a balance, a key with a budget), as an exact
per-request hold in one transaction on a worker thread. 402 if the wallet
(``insufficient_funds``, with the amount needed and the balance available) or the key's
budget (``budget_exceeded``) can't cover it. The per-key tokens-per-minute limit is checked
here too (429 with ``Retry-After``).
"""

from __future__ import annotations

from dataclasses import dataclass

from control.core import wallet
from control.core.errors import BudgetExceeded, InsufficientFunds
from control.core.keys import KeyPrincipal
from control.core.proxy_money import Reservation
from proxy_addons.pricing import hold_input_tokens, worst_case_cost
from proxy_addons.route import RoutedRequest
from proxy_addons.services import Services
from proxy_addons.state import Refusal


@dataclass(frozen=True, slots=True)
class Hold:
    reservation: Reservation
    input_tokens: int

    @property
    def amount(self) -> int:
        return self.reservation.amount


class _Short(Exception):  # noqa: N818 - carries the available balance out of the thread
    def __init__(self, available: int) -> None:
        self.available = available


def insufficient_funds(services: Services, needed: int, available: int) -> Refusal:
    """402 with the numbers a client can act on, in the configured currency."""
    scale = int(services.config.wallet["minor_unit_scale"])
    currency = services.config.wallet["currency"]
    return Refusal(
        402, "insufficient_funds",
        f"insufficient balance: this request's worst-case cost is held before forwarding "
        f"({needed / scale:g} {currency} needed, {max(0, available) / scale:g} {currency} "
        "available); a smaller max_tokens lowers the amount held",
        details={"needed": needed / scale, "available": max(0, available) / scale,
                 "currency": currency})


async def reserve(services: Services, principal: KeyPrincipal, routed: RoutedRequest,
                  request_bytes: int, request_id: str) -> Hold:
    """Count the TPM limit and reserve the worst case; raises Refusal (402/429)."""
    input_tokens = hold_input_tokens(request_bytes)
    if principal.tpm_limit is not None:
        wait = await services.acquire(services.tpm, principal.key_id, principal.tpm_limit,
                                      input_tokens)
        if wait is not None:
            raise Refusal(429, "rate_limited", "this API key's tokens-per-minute limit "
                          "is reached", retry_after=wait)
    amount = worst_case_cost(routed.model.prices, input_tokens, routed.max_output_tokens,
                             routed.choices)
    money = services.money
    got = money.reserve_in_memory(principal.account_id, amount, key_budget=principal.budget)
    if got is not None:
        return Hold(got, input_tokens)

    def take() -> Reservation:
        try:
            return money.reserve_hold(principal.account_id, amount, key_id=principal.key_id,
                                      request_id=request_id)
        except InsufficientFunds:
            with services.db.read_transaction() as session:
                available = wallet.get_balance(session, principal.account_id).available
            # what this process's own lease keeps is available to this customer too
            raise _Short(available + money.book.free(principal.account_id)) from None

    try:
        got = await services.blocking(take)
    except _Short as short:
        raise insufficient_funds(services, amount, short.available) from None
    except BudgetExceeded:
        raise Refusal(402, "budget_exceeded", "this API key's budget is exhausted") from None
    return Hold(got, input_tokens)

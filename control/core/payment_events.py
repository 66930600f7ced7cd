"""Payment-processor events, each applied at most once across all accounts.

The wallet's idempotency key is per account, so on its own the same event id sent with two
different ``account_id`` metadata values would credit both. ``payment_events`` keys every
event by its own id first. A payment for an account that was deleted or erased is not
credited: it is kept here as ``refused`` and audited (``wallet.payment_refused``) so the
operator can refund it at the processor.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from control.core import wallet
from control.core.audit import Action
from control.core.context import Ctx
from control.core.errors import NotFound
from control.core.models import Account, PaymentEvent

CLOSED = ("deleted", "erased")


@dataclass(frozen=True)
class Outcome:
    """What happened to one event: ``credited``, ``refused`` (closed account) or
    ``duplicate`` (this event id was already applied, to whichever account)."""

    status: str
    reason: str | None = None


def apply_payment(unit_of_work: Callable[[], AbstractContextManager[Ctx]], event_id: str,
                  account_id: str, amount: int) -> Outcome:
    """Credit ``amount`` to ``account_id`` for processor event ``event_id``, exactly once.

    ``unit_of_work`` opens the caller's transaction (``with unit_of_work() as ctx``); a
    concurrent delivery of the same event loses the race on the primary key and is reported
    as a duplicate. Raises NotFound for an account that never existed."""
    try:
        with unit_of_work() as ctx:
            return _apply(ctx, event_id, account_id, amount)
    except IntegrityError:
        return Outcome("duplicate")


def _apply(ctx: Ctx, event_id: str, account_id: str, amount: int) -> Outcome:
    if ctx.session.get(PaymentEvent, event_id) is not None:
        return Outcome("duplicate")
    account = ctx.session.get(Account, account_id)
    if account is None:
        raise NotFound("metadata.account_id names no account")
    if account.status in CLOSED:
        reason = f"account_{account.status}"
        ctx.session.add(PaymentEvent(event_id=event_id, account_id=account_id, amount=amount,
                                     outcome="refused", reason=reason))
        ctx.session.flush()
        ctx.audit(Action.WALLET_PAYMENT_REFUSED, "account", account_id, amount=amount,
                  reference=event_id, reason=reason)
        return Outcome("refused", reason)
    ctx.session.add(PaymentEvent(event_id=event_id, account_id=account_id, amount=amount,
                                 outcome="credited"))
    ctx.session.flush()
    wallet.topup(ctx, account_id, amount, idempotency_key=f"payment:{event_id}",
                 reference=event_id, payment=True)
    return Outcome("credited")

"""``POST /webhooks/payments``: signed payment events credit a wallet exactly once.

Signature: the Stripe scheme. ``Stripe-Signature: t=<unix time>,v1=<hex>[,v1=…]`` where
``v1 = HMAC-SHA256(secret, f"{t}.{raw body}")``; the secret is read from the environment
variable named by ``control.payment_webhook_secret_env``; timestamps further than
``control.payment_webhook_tolerance_seconds`` from now are refused; comparison is
constant-time.

Events (Stripe's shapes): ``checkout.session.completed`` (``data.object.amount_total``,
only when ``payment_status`` is ``paid``) and ``payment_intent.succeeded``
(``data.object.amount_received``); both carry ``data.object.currency`` and
``data.object.metadata.account_id``. Amounts are in the currency's smallest unit as the
processor sends them (cents for USD); they are converted to hushgate minor units by
``amount * minor_unit_scale / 10**decimals(currency)`` and must be in the wallet currency.
Other event types are acknowledged and ignored, and so is a payment whose ``metadata`` names
no ``account_id`` (in any currency): it did not come from hushgate's checkout (another product
on the same Stripe account, or the PaymentIntent behind a hushgate Checkout Session, which
carries no metadata), and refusing it would only make the processor retry it for days and
then disable the endpoint (the ``reason`` of an ignored event says which: ``event_type``,
``unpaid``, ``no_account``). Each event id is applied at most once across all accounts
(``control.core.payment_events``), so a replay is acknowledged (200) and changes nothing, and
a payment for a deleted or erased account is acknowledged, not credited, and kept for the
operator. A forged or unsigned event is refused (400) before any of this is read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any, NamedTuple

from flask import Blueprint, Response, jsonify, request

from control.core import payment_events, validation
from control.core.audit import Actor
from control.core.errors import HushgateError, NotFound, ValidationError
from control.core.payments import currency_decimals

bp = Blueprint("webhooks", __name__)
ACTOR = Actor("webhook", "payments")
CREDIT_EVENTS = {"checkout.session.completed": "amount_total",
                 "payment_intent.succeeded": "amount_received"}


class WebhookRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def verify_signature(payload: bytes, header: str | None, secret: str, tolerance: int,
                     now: float | None = None) -> int:
    """Check a ``t=…,v1=…`` header; return the timestamp or raise WebhookRefused."""
    if not header or len(header) > 2000:
        raise WebhookRefused(400, "signature_missing", "missing Stripe-Signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        k, _, v = part.strip().partition("=")
        if k == "t":
            # Unix seconds: at most 12 digits (a 309-digit number would overflow the clock
            # arithmetic below instead of simply being refused).
            if not v.isdigit() or len(v) > 12:
                raise WebhookRefused(400, "signature_invalid", "bad timestamp")
            timestamp = int(v)
        elif k == "v1":
            candidates.append(v)
    if timestamp is None or not candidates:
        raise WebhookRefused(400, "signature_invalid", "no timestamp or v1 signature")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise WebhookRefused(400, "signature_stale", "timestamp outside the tolerance")
    signed = str(timestamp).encode() + b"." + payload
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    # Compare against every candidate, always, so timing says nothing about which matched.
    ok = False
    for candidate in candidates:
        ok |= hmac.compare_digest(expected, candidate)
    if not ok:
        raise WebhookRefused(400, "signature_invalid", "signature does not match")
    return timestamp


def to_minor_units(amount: int, currency: str, scale: int) -> int:
    """Processor smallest units -> hushgate minor units (exact, or refused)."""
    units, rem = divmod(amount * scale, 10 ** currency_decimals(currency))
    if rem:
        raise WebhookRefused(422, "amount_invalid", "amount cannot be represented exactly")
    return units


def parse_event(payload: bytes) -> dict[str, Any]:
    try:
        event = validation.parse_json(payload)
    except ValidationError as exc:
        raise WebhookRefused(400, "malformed", str(exc)) from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) \
            or not isinstance(event.get("type"), str) or not 0 < len(event["id"]) <= 100:
        raise WebhookRefused(400, "malformed", "event needs an id and a type")
    return event


class Ignored(NamedTuple):
    """An event acknowledged without crediting anything, and why."""

    reason: str  # event_type | unpaid | no_account


def credit_of(event: dict[str, Any], wallet_currency: str,
              scale: int) -> tuple[str, int] | Ignored:
    """(account id, minor units) for a crediting event; Ignored for events we acknowledge
    and leave alone; WebhookRefused for a hushgate payment we cannot apply."""
    field = CREDIT_EVENTS.get(event["type"])
    if field is None:
        return Ignored("event_type")
    obj = (event.get("data") or {}).get("object") if isinstance(event.get("data"), dict) else None
    if not isinstance(obj, dict):
        raise WebhookRefused(400, "malformed", "event has no data.object")
    if event["type"] == "checkout.session.completed" and obj.get("payment_status", "paid") \
            != "paid":
        return Ignored("unpaid")
    metadata = obj.get("metadata")
    account_id = metadata.get("account_id") if isinstance(metadata, dict) else None
    # Checked before the amount and the currency: a payment of another product may be in any
    # currency. Stripe drops metadata keys set to "", so "" is as absent as a missing key.
    if account_id is None or account_id == "":
        return Ignored("no_account")
    if not isinstance(account_id, str) or len(account_id) > 32:
        raise WebhookRefused(422, "account_invalid", "metadata.account_id is not an account id")
    amount = obj.get(field, obj.get("amount"))
    currency = obj.get("currency")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise WebhookRefused(422, "amount_invalid", f"data.object.{field} must be positive")
    if not isinstance(currency, str) or currency.lower() != wallet_currency.lower():
        raise WebhookRefused(422, "currency_mismatch",
                             f"currency must be {wallet_currency.lower()}")
    return account_id, to_minor_units(amount, currency, scale)


def _refuse(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "fields": {}}}), status


@bp.post("/payments")
def payments() -> Any:
    from control.web.ext import hg

    config = hg().config
    c = config.control
    secret = os.environ.get(c["payment_webhook_secret_env"] or "") or ""
    if not secret:
        return _refuse(503, "not_configured", "the payment webhook secret is not configured")
    payload = request.get_data(cache=False)
    try:
        verify_signature(payload, request.headers.get("Stripe-Signature"), secret,
                         c["payment_webhook_tolerance_seconds"])
        event = parse_event(payload)
        credit = credit_of(event, config.wallet["currency"], config.wallet["minor_unit_scale"])
    except WebhookRefused as exc:
        return _refuse(exc.status, exc.code, exc.message)
    if isinstance(credit, Ignored):
        return {"received": True, "ignored": True, "reason": credit.reason}
    account_id, amount = credit
    try:
        outcome = payment_events.apply_payment(lambda: hg().uow(ACTOR), event["id"],
                                               account_id, amount)
    except NotFound:
        return _refuse(422, "unknown_account", "metadata.account_id names no account")
    except HushgateError as exc:
        return _refuse(409 if exc.code == "idempotency_conflict" else 422, exc.code, str(exc))
    # A refused payment is acknowledged (the processor must not retry it) and kept for the
    # operator, who refunds it there.
    return {"received": True, "credited": outcome.status == "credited",
            "duplicate": outcome.status == "duplicate",
            **({"refused": outcome.reason} if outcome.status == "refused" else {})}

"""Self-service top-ups: a Stripe Checkout Session for an amount the account holder chooses.

The wallet is never credited here. The holder pays on Stripe's hosted page; Stripe then sends
the signed ``checkout.session.completed`` event to ``POST /webhooks/payments``
(``control.web.webhooks``), which credits ``data.object.amount_total`` to
``data.object.metadata.account_id`` exactly once (idempotency key ``payment:<event id>``).
So the session carries exactly what that webhook reads:

- ``metadata.account_id`` (and ``metadata.hushgate_reference``, the ``checkout_sessions`` row);
- one line item of the amount, in the wallet currency's smallest unit (cents for USD);
- card payments only, so a completed session is a paid one (``payment_status: paid``);
- no metadata on the PaymentIntent: were the endpoint also subscribed to
  ``payment_intent.succeeded``, that event then names no account and is acknowledged without
  crediting anything, so one payment can never be credited twice.

Amounts here are wallet minor units (``wallet.minor_unit_scale``), within
``payments.min_amount``..``payments.max_amount``; nothing about the holder but the account id
and the amount is sent to the processor.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from control.core import accounts
from control.core.audit import Action
from control.core.config import Config
from control.core.context import Ctx
from control.core.errors import ConfigError, HushgateError, ValidationError
from control.core.models import CheckoutSession
from control.core.money import format_amount
from control.core.passwords import control_url, listen_url

log = logging.getLogger("hushgate.payments")
# The SDK's own log lines quote the key's last digits, the request's parameters and the
# processor's response bodies: none of them may reach a log. A filter (unlike a level or the
# ``disabled`` flag) survives a later ``logging.config.dictConfig``.
logging.getLogger("stripe").addFilter(lambda record: False)

# ISO 4217 currencies whose smallest unit is not a hundredth, as Stripe counts them.
ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf",
                          "ugx", "vnd", "vuv", "xaf", "xof", "xpf"})
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
RETURN_PATH = "/portal/ledger"
STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"


class PaymentsDisabled(HushgateError):
    """Self-service top-ups are not configured (``payments.provider`` or its secret key)."""

    code = "payments_disabled"


class PaymentProviderError(HushgateError):
    """The processor refused the checkout or could not be reached (nothing was charged)."""

    code = "payment_provider_error"


@dataclass(frozen=True)
class Checkout:
    """A started checkout: send the holder's browser to ``url``."""

    reference: str
    session_id: str
    url: str
    amount: int


def currency_decimals(currency: str) -> int:
    """Decimals of the currency's smallest unit as the processor counts it."""
    c = currency.lower()
    return 0 if c in ZERO_DECIMAL else 3 if c in THREE_DECIMAL else 2


def processor_amount(amount: int, currency: str, scale: int) -> int:
    """Wallet minor units -> the processor's smallest unit, exactly (or refused)."""
    units, rem = divmod(amount * 10 ** currency_decimals(currency), scale)
    if rem:
        smallest = format_amount(scale // 10 ** currency_decimals(currency), scale)
        raise ValidationError(f"the amount must be a multiple of {smallest} {currency.upper()}",
                              "amount")
    return units


def _secret_key(config: Config) -> str | None:
    env = config.raw["payments"].get("secret_key_env")
    return (os.environ.get(env) or None) if env else None


def enabled(config: Config) -> bool:
    """True when the portal may offer "Add credit"."""
    return config.raw["payments"].get("provider") == "stripe" and _secret_key(config) is not None


def amount_bounds(config: Config) -> tuple[int, int]:
    """(smallest, largest) top-up in wallet minor units."""
    p = config.raw["payments"]
    lo, hi = p["min_amount"], min(p["max_amount"], config.wallet["max_amount"])
    if lo > hi:
        raise ConfigError("invalid configuration: payments.min_amount is above "
                          "payments.max_amount (or wallet.max_amount)")
    return lo, hi


def _check_amount(config: Config, amount: int) -> int:
    w = config.wallet
    lo, hi = amount_bounds(config)
    if isinstance(amount, bool) or not isinstance(amount, int) or not lo <= amount <= hi:
        fmt = lambda v: format_amount(v, w["minor_unit_scale"], w["currency"])  # noqa: E731
        raise ValidationError(f"the amount must be between {fmt(lo)} and {fmt(hi)}", "amount")
    return processor_amount(amount, w["currency"], w["minor_unit_scale"])


def _session_params(config: Config, account_id: str, reference: str,
                    units: int) -> dict[str, Any]:
    p = config.raw["payments"]
    back = lambda outcome: control_url(config, f"{RETURN_PATH}?checkout={outcome}")  # noqa: E731
    return {
        "mode": "payment",
        "payment_method_types": ["card"],
        "client_reference_id": reference,
        "metadata": {"account_id": account_id, "hushgate_reference": reference},
        "line_items": [{"quantity": 1, "price_data": {
            "currency": config.wallet["currency"].lower(), "unit_amount": units,
            "product_data": {"name": f"{config.policy['operator_name']} credit"}}}],
        "success_url": p.get("success_url") or back("paid"),
        "cancel_url": p.get("cancel_url") or back("cancelled"),
    }


# -- what the portal shows next to "Add credit" ---------------------------------------------


@dataclass(frozen=True)
class Price:
    """One catalog model's prices per million tokens, in wallet minor units and as text."""

    model: str
    api_format: str
    endpoints: tuple[str, ...]
    input: int
    output: int
    cached_input: int
    text: dict[str, str]


def price_list(config: Config) -> list[Price]:
    """The catalog with its prices, as clients are charged (``models`` in the config)."""
    w = config.wallet
    out = []
    for m in config.models.values():
        amounts = {"input": m.prices.input, "output": m.prices.output,
                   "cached_input": m.prices.cached_input}
        out.append(Price(m.name, m.provider.api_format, m.endpoints, **amounts,
                         text={k: format_amount(v, w["minor_unit_scale"], w["currency"])
                               for k, v in amounts.items()}))
    return out


def gateway_url(config: Config) -> str:
    """The base URL clients give their SDK (``…/v1``)."""
    return listen_url(config.proxy) + "/v1"


def checkout_origin(config: Config) -> str:
    """The origin of the processor's hosted checkout page. The page whose form starts a
    checkout must allow it in its CSP ``form-action`` (browsers apply ``form-action`` to the
    redirect that follows the POST)."""
    api_base = config.raw["payments"].get("api_base")
    if api_base:  # a local double serves its own checkout page
        parts = urlsplit(api_base)
        return f"{parts.scheme}://{parts.netloc}"
    return STRIPE_CHECKOUT_ORIGIN


def create_checkout(ctx: Ctx, account_id: str, amount: int) -> Checkout:
    """Start a Stripe Checkout Session crediting ``amount`` (wallet minor units) to the
    account once paid. Records the session (``checkout_sessions``) and audits it; flushes.

    The processor is called inside the caller's transaction, with the reference as Stripe's
    idempotency key: a retried call returns the same session, and a session whose row was
    rolled back still credits the right account when paid (its metadata names it)."""
    config = ctx.config
    if config.raw["payments"].get("provider") != "stripe":
        raise PaymentsDisabled("self-service top-ups are not enabled")
    key = _secret_key(config)
    if key is None:
        raise PaymentsDisabled("self-service top-ups are not configured (no processor key)")
    units = _check_amount(config, amount)
    account = accounts.get_account(ctx.session, account_id)
    if account.status != "active":
        raise ValidationError(f"account {account.id} is {account.status}", "account")
    row = CheckoutSession(account_id=account.id, provider="stripe", amount=amount,
                          currency=config.wallet["currency"])
    ctx.session.add(row)
    ctx.session.flush()
    sid, url = _create_session(config, key, _session_params(config, account.id, row.id, units),
                               row.id)
    row.provider_session_id = sid
    ctx.session.flush()
    ctx.audit(Action.PAYMENT_CHECKOUT_CREATED, "account", account.id, amount=amount,
              reference=row.id, session_id=sid)
    return Checkout(reference=row.id, session_id=sid, url=url, amount=amount)


def _create_session(config: Config, key: str, params: dict[str, Any],
                    reference: str) -> tuple[str, str]:
    """(session id, hosted page URL) of a new Checkout Session."""
    import stripe  # here: the proxy and the CLI never need the SDK

    p = config.raw["payments"]
    http = stripe.RequestsClient(timeout=p["timeout_seconds"])
    client = stripe.StripeClient(key, http_client=http, max_network_retries=1,
                                 base_addresses={"api": p["api_base"]} if p.get("api_base")
                                 else None)
    try:
        session = client.v1.checkout.sessions.create(
            params=params, options={"idempotency_key": f"hushgate-checkout-{reference}"})
    except stripe.StripeError as exc:
        # The SDK's message can quote the key's tail or the request: keep only its type.
        log.warning("checkout session refused by the processor (%s)", type(exc).__name__)
        raise PaymentProviderError("the payment processor refused or could not be reached; "
                                   "nothing was charged, try again later") from None
    finally:
        http.close()
    sid, url = getattr(session, "id", None), getattr(session, "url", None)
    if not isinstance(sid, str) or not isinstance(url, str) or not 0 < len(sid) <= 255:
        raise PaymentProviderError("the payment processor answered without a checkout page")
    return sid, url

"""Money is integer minor units. Parsing and formatting for people live here."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from control.core.errors import ValidationError


def parse_amount(text: str, *, scale: int, max_amount: int, minor: bool = False,
                 allow_negative: bool = False, field: str = "amount") -> int:
    """Parse a decimal amount in major units (``"12.50"``) or, with ``minor``, an integer of
    minor units, into minor units. Zero, fractional minor units, non-numbers, values beyond
    ``max_amount`` and (unless allowed) negatives are refused with a readable error."""
    raw = str(text).strip()
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValidationError(f"{field} {raw[:40]!r} is not a number", field) from None
    if not value.is_finite():
        raise ValidationError(f"{field} must be a finite number", field)
    units = value if minor else value * scale
    if units != units.to_integral_value():
        decimals = len(str(scale)) - 1
        what = "a whole number of minor units" if minor else f"at most {decimals} decimals"
        raise ValidationError(f"{field} {raw[:40]} is fractional: use {what}", field)
    result = int(units)
    if result == 0:
        raise ValidationError(f"{field} must not be zero", field)
    if result < 0 and not allow_negative:
        raise ValidationError(f"{field} must be positive", field)
    if abs(result) > max_amount:
        limit = format_amount(max_amount, scale)
        raise ValidationError(f"{field} is too large (the limit is {limit})", field)
    return result


def format_amount(minor_units: int, scale: int, currency: str | None = None) -> str:
    """``12500000, 1_000_000 -> '12.500000'``; with currency, ``'12.500000 USD'``."""
    digits = len(str(scale)) - 1
    sign = "-" if minor_units < 0 else ""
    whole, frac = divmod(abs(minor_units), scale)
    text = f"{sign}{whole}.{frac:0{digits}d}" if digits else f"{sign}{whole}"
    return f"{text} {currency}" if currency else text


def cost_of(tokens: int, price_per_million: int) -> int:
    """Cost in minor units of ``tokens`` at a per-million price, rounded up (never free)."""
    if tokens <= 0 or price_per_million <= 0:
        return 0
    return -(-tokens * price_per_million // 1_000_000)

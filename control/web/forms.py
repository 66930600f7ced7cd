"""Small helpers shared by the HTML blueprints: form values and service errors."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from flask import request

from control.core.errors import (
    Conflict,
    HushgateError,
    InsufficientFunds,
    NotFound,
    ValidationError,
)


def field(name: str, max_len: int = 1000) -> str:
    return (request.form.get(name) or "").strip()[:max_len]


def optional_int(name: str) -> int | None:
    raw = field(name, 20)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a whole number", name) from None


def optional_datetime(name: str) -> datetime | None:
    raw = field(name, 40)
    if not raw:
        return None
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an ISO date or datetime", name) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def new_idempotency_key() -> str:
    """Rendered into money forms so a double submit credits once."""
    return "web:" + secrets.token_urlsafe(18)


def error_status(exc: HushgateError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, InsufficientFunds):
        return 409
    return 422


def errors_of(exc: HushgateError) -> dict[str, str]:
    """Field -> message for the form (``_`` for a message about the whole form)."""
    name = getattr(exc, "field", None) or "_"
    return {name: str(exc)}

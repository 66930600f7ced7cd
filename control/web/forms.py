"""Small helpers shared by the HTML blueprints: form values and service errors."""

from __future__ import annotations

import secrets
from datetime import datetime

from flask import request

from control.core import validation
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
    return validation.parse_int(field(name, 40), name)


def optional_datetime(name: str) -> datetime | None:
    return validation.parse_datetime(field(name, 64), name)


def query_int(name: str, default: int | None = None, minimum: int = 0,
              maximum: int = validation.INT64_MAX) -> int | None:
    """A whole-number query parameter (a page, a keyset cursor); ValidationError (a 400
    page) when it is not one or is out of range."""
    value = validation.parse_int(request.args.get(name), name, minimum=minimum,
                                 maximum=maximum)
    return default if value is None else value


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


def new_password() -> str:
    """The form's ``password``, refused unless ``password2`` repeats it (the strength rules
    are the service's)."""
    password = request.form.get("password") or ""
    if password != (request.form.get("password2") or ""):
        raise ValidationError("the two passwords differ", "password2")
    return password

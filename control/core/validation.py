"""The one layer that turns hostile input into a clear ``ValidationError``.

Shared by the admin UI and portal (forms, query strings), the JSON API (which applies it to
every value and then checks bodies against ``schemas/openapi.json``) and the CLI. What it
refuses is what the databases would otherwise fail on with a server error: NUL bytes
(PostgreSQL text can't hold them), lone surrogates (not encodable as UTF-8), integers past
64 bits, datetimes that leave the representable range once converted to UTC, JSON nested
deeper than any real document, and strings longer than their column.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from control.core.errors import ValidationError

INT64_MAX = 2**63 - 1
MAX_JSON_DEPTH = 32
MAX_DIGITS = 19  # no integer the database can hold has more


def text_problem(value: str) -> str | None:
    """Why ``value`` can't be stored as text, or None."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains invalid Unicode (a lone surrogate)"
    return None


def check_text(value: str, field: str, max_len: int | None = None) -> str:
    """``value`` if it can be stored (and fits ``max_len``), else ValidationError."""
    problem = text_problem(value)
    if problem:
        raise ValidationError(f"{field} {problem}", field)
    if max_len is not None and len(value) > max_len:
        raise ValidationError(f"{field} is longer than {max_len} characters", field)
    return value


def check_tree(data: Any, field: str = "body", depth: int = 0) -> Any:
    """Every string (keys too) in a decoded JSON document, and its depth."""
    if depth > MAX_JSON_DEPTH:
        raise ValidationError(f"{field} is nested more than {MAX_JSON_DEPTH} levels deep",
                              field)
    if isinstance(data, str):
        check_text(data, field)
    elif isinstance(data, dict):
        for k, v in data.items():
            check_text(k, field)
            check_tree(v, k if depth == 0 else f"{field}.{k}", depth + 1)
    elif isinstance(data, list):
        for v in data:
            check_tree(v, field, depth + 1)
    elif isinstance(data, int) and not isinstance(data, bool) and abs(data) > INT64_MAX:
        raise ValidationError(f"{field} is out of range", field)
    return data


def parse_json(raw: bytes) -> Any:
    """Decode a JSON request body, refusing what ``check_tree`` refuses."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValidationError(f"the body is nested more than {MAX_JSON_DEPTH} levels deep",
                              "body") from None
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("the body is not valid JSON", "body") from None
    return check_tree(data)


def parse_int(raw: str | int | None, field: str, *, minimum: int = 0,
              maximum: int = INT64_MAX) -> int | None:
    """An integer in ``[minimum, maximum]`` from text (or an int), None when empty."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if len(text.lstrip("+-")) > MAX_DIGITS or not text.lstrip("+-").isdigit():
            raise ValidationError(f"{field} must be a whole number", field)
        value = int(text)
    else:
        value = raw
    if not minimum <= value <= maximum:
        raise ValidationError(f"{field} must be between {minimum} and {maximum}", field)
    return value


def parse_datetime(raw: str | None, field: str) -> datetime | None:
    """An ISO 8601 date or datetime as an aware UTC datetime (naive means UTC)."""
    if raw is None or raw == "":
        return None
    check_text(raw, field, 64)
    try:
        dt = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValidationError(f"{field} must be an ISO 8601 date-time", field) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise ValidationError(f"{field} is out of range", field) from None

"""Request records: the metadata-only trace of each proxied request."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import jsonschema
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from control.core.config import load_schema
from control.core.models import RequestRecord

SCHEMA_NAME = "request-record.schema.json"
RECORD_FIELDS: tuple[str, ...] = tuple(load_schema(SCHEMA_NAME)["properties"])
#: Fields a record may omit (the schema doesn't require them), with their stored default.
OPTIONAL_FIELDS: dict[str, Any] = {"debt": False}


def validate_record(record: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError if the record isn't exactly the schema's fields."""
    jsonschema.validate(record, load_schema(SCHEMA_NAME),
                        format_checker=jsonschema.FormatChecker())


def record_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record dict as a row for ``request_records`` (optional fields defaulted)."""
    row = {f: record[f] if f in record or f not in OPTIONAL_FIELDS else OPTIONAL_FIELDS[f]
           for f in RECORD_FIELDS}
    if isinstance(row["time"], str):
        row["time"] = datetime.fromisoformat(row["time"])
    return row


def insert_records(session: Session, records: Iterable[dict[str, Any]]) -> int:
    """Bulk-insert validated record dicts (one executemany)."""
    rows = [record_row(r) for r in records]
    if rows:
        session.execute(insert(RequestRecord), rows)
    return len(rows)


def record_dict(r: RequestRecord) -> dict[str, Any]:
    """A stored record as a schema-valid dict."""
    out = {f: getattr(r, f) for f in RECORD_FIELDS}
    out["time"] = r.time.isoformat()
    return out


def iter_account_records(session: Session, account_id: str,
                         batch: int = 2000) -> Iterator[dict[str, Any]]:
    """Stream an account's records in id order without loading them all."""
    last = 0
    while True:
        rows = session.scalars(select(RequestRecord)
                               .where(RequestRecord.account_id == account_id,
                                      RequestRecord.id > last)
                               .order_by(RequestRecord.id).limit(batch)).all()
        if not rows:
            return
        for r in rows:
            yield record_dict(r)
        last = rows[-1].id
        session.expunge_all()

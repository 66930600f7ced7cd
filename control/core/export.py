"""Data export: everything held about one account, as one JSON document, streamed.

The document follows ``schemas/export.schema.json``: profile, preferences, keys (metadata,
never a secret or hash), wallet balance and the full ledger, the request records still
retained, and the audit events about the account (its own id or its keys as the target, or
the account holder as the actor), plus the retention windows that apply.

``iter_export`` yields JSON text in chunks of about ``CHUNK_CHARS`` characters while reading
the ledger, the records and the audit events in keyset-paginated batches, so memory stays
flat no matter how many records an account has. It only reads: the caller records the export
in the audit log (``audit_export``) in its own unit of work, as the web and CLI front ends do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

import jsonschema
from referencing import Registry, Resource
from sqlalchemy import or_, select, tuple_
from sqlalchemy.orm import Session

from control.core import accounts, wallet
from control.core.audit import Action, event_dict
from control.core.base import utcnow
from control.core.config import Config, load_schema
from control.core.context import Ctx
from control.core.keys import key_dict, list_keys
from control.core.models import AuditEvent, LedgerEntry, RequestRecord
from control.core.records import RECORD_FIELDS

SCHEMA_NAME = "export.schema.json"
CHUNK_CHARS = 64 * 1024
BATCH = 2000


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None


def _iter_ledger(session: Session, account_id: str) -> Iterator[dict[str, Any]]:
    last = 0
    while True:
        rows = session.scalars(select(LedgerEntry)
                               .where(LedgerEntry.account_id == account_id,
                                      LedgerEntry.id > last)
                               .order_by(LedgerEntry.id).limit(BATCH)).all()
        if not rows:
            return
        for e in rows:
            yield wallet.entry_dict(e)
        last = rows[-1].id
        session.expunge_all()


def _iter_records(session: Session, account_id: str) -> Iterator[dict[str, Any]]:
    """The account's records oldest first, keyset-paginated on (time, id) so each batch is a
    range scan of the (account_id, time) index — ordering by id alone makes the database
    sort the account's remaining records for every batch (quadratic on SQLite). Plain rows,
    not ORM objects: nothing accumulates in the session."""
    cols = [getattr(RequestRecord, f) for f in RECORD_FIELDS]
    q = (select(RequestRecord.id, *cols).where(RequestRecord.account_id == account_id)
         .order_by(RequestRecord.time, RequestRecord.id).limit(BATCH))
    rows = session.execute(q).all()
    while rows:
        for row in rows:
            record = dict(zip(RECORD_FIELDS, row[1:], strict=True))
            record["time"] = record["time"].isoformat()
            yield record
        last = rows[-1]
        rows = session.execute(q.where(tuple_(RequestRecord.time, RequestRecord.id)
                                       > tuple_(last.time, last.id))).all()


def _iter_audit(session: Session, account_id: str,
                key_ids: list[str]) -> Iterator[dict[str, Any]]:
    about = or_(AuditEvent.target_id.in_([account_id, *key_ids]),
                AuditEvent.actor == f"account:{account_id}")
    last = 0
    while True:
        rows = session.scalars(select(AuditEvent).where(about, AuditEvent.seq > last)
                               .order_by(AuditEvent.seq).limit(BATCH)).all()
        if not rows:
            return
        for ev in rows:
            yield event_dict(ev)
        last = rows[-1].seq
        session.expunge_all()


def _array(items: Iterator[Any]) -> Iterator[str]:
    yield "["
    first = True
    for item in items:
        yield _dumps(item) if first else "," + _dumps(item)
        first = False
    yield "]"


def _pieces(session: Session, config: Config, account_id: str) -> Iterator[str]:
    account = accounts.get_account(session, account_id)
    account_id = account.id
    profile = {"id": account.id, "name": account.name, "email": account.email,
               "company": account.company, "status": account.status,
               "adult_attested_at": _iso(account.adult_attested_at),
               "created_at": _iso(account.created_at), "updated_at": _iso(account.updated_at),
               "deleted_at": _iso(account.deleted_at), "erased_at": _iso(account.erased_at)}
    preferences = {"opt_out_non_essential": bool(account.opt_out_non_essential)}
    keys = list_keys(session, account_id)
    key_ids = [k.key_id for k in keys]
    bal = wallet.get_balance(session, account_id)
    w = config.wallet
    r = config.retention
    head = {
        "format": "hushgate.export", "version": 1, "generated_at": utcnow().isoformat(),
        "operator": {"name": config.policy["operator_name"],
                     "contact_email": config.policy["contact_email"]},
        "account": profile, "preferences": preferences,
        "keys": [key_dict(k) for k in keys],
        "wallet": {"currency": w["currency"], "minor_unit_scale": w["minor_unit_scale"],
                   "balance": bal.balance, "held": bal.held, "leased": bal.leased,
                   "available": bal.available},
        "retention": {k: r[k] for k in ("request_records_days", "audit_events_days",
                                        "deleted_account_erasure_days")},
    }
    session.expunge_all()
    yield _dumps(head)[:-1]  # the small fields, with the object left open
    yield ',"ledger":'
    yield from _array(_iter_ledger(session, account_id))
    yield ',"request_records":'
    yield from _array(_iter_records(session, account_id))
    yield ',"audit_events":'
    yield from _array(_iter_audit(session, account_id, key_ids))
    yield "}"


def iter_export(session: Session, config: Config, account_id: str) -> Iterator[str]:
    """The export document as JSON text chunks (concatenate them for the document).

    Raises NotFound before yielding anything if the account doesn't exist.
    """
    pieces = _pieces(session, config, account_id)
    buf: list[str] = [next(pieces)]  # resolves the account first, so errors come early
    size = len(buf[0])
    for piece in pieces:
        buf.append(piece)
        size += len(piece)
        if size >= CHUNK_CHARS:
            yield "".join(buf)
            buf, size = [], 0
    if buf:
        yield "".join(buf)


def write_export(session: Session, config: Config, account_id: str, fh: IO[str]) -> int:
    """Stream the export into a text file object; returns the number of characters."""
    written = 0
    for chunk in iter_export(session, config, account_id):
        fh.write(chunk)
        written += len(chunk)
    return written


def audit_export(ctx: Ctx, account_id: str, *, via: str) -> str:
    """Record that an account's data was exported (``via``: cli, api, portal). Returns the
    account id (the reference may be an email in the CLI)."""
    account = accounts.get_account(ctx.session, account_id)
    ctx.audit(Action.ACCOUNT_EXPORTED, "account", account.id, via=via)
    return account.id


def validator() -> jsonschema.Draft202012Validator:
    """A validator of export documents that resolves the record and audit-event schemas."""
    registry: Registry = Registry()
    for name in ("request-record.schema.json", "audit-event.schema.json"):
        schema = load_schema(name)
        registry = registry.with_resource(schema["$id"], Resource.from_contents(schema))
    return jsonschema.Draft202012Validator(load_schema(SCHEMA_NAME), registry=registry,
                                           format_checker=jsonschema.FormatChecker())

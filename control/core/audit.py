"""The immutable audit history: an HMAC-SHA256 chain of administrative events.

Each event's hash covers its own fields and the previous event's hash, keyed with the
operator's audit key, so an edit, a removal or a reordering breaks the chain at that point.
Appends are serialized by updating the single ``audit_state`` row first (a row lock on
PostgreSQL; on SQLite every write transaction already holds the write lock), so two writers
can never both extend the same head.

The state row itself is signed with the same key (``state_sig`` over the head, the purge
checkpoint and the highest head anchored in the head file), so rewinding or raising it with
plain SQL is detected, and an append refuses to extend a state it did not sign. What the
database alone cannot prove — that nobody removed the newest events *and* replayed an older
signed state row — is what the head file (``control.core.audit_head``) and the external
anchors (``control.core.anchors``) are for: ``verdict`` combines all three, and the CLI, the
admin UI and the API all show its answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control.core import audit_head
from control.core.base import new_id, utcnow
from control.core.config import Config
from control.core.db import Database
from control.core.errors import HushgateError
from control.core.models import AuditEvent, AuditState

GENESIS = "0" * 64


class Action(StrEnum):
    """The fixed set of audited actions."""

    ACCOUNT_CREATED = "account.created"
    ACCOUNT_UPDATED = "account.updated"
    ACCOUNT_DISABLED = "account.disabled"
    ACCOUNT_ENABLED = "account.enabled"
    ACCOUNT_DELETED = "account.deleted"
    ACCOUNT_ERASED = "account.erased"
    ACCOUNT_EXPORTED = "account.exported"
    PREFERENCES_UPDATED = "account.preferences_updated"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"
    KEY_ROTATED = "key.rotated"
    WALLET_TOPPED_UP = "wallet.topped_up"
    WALLET_ADJUSTED = "wallet.adjusted"
    WALLET_PAYMENT_RECEIVED = "wallet.payment_received"
    HOLDS_EXPIRED = "wallet.holds_expired"
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_SIGNED_IN = "user.signed_in"
    USER_SIGNED_OUT = "user.signed_out"
    USER_SIGN_IN_FAILED = "user.sign_in_failed"
    USER_TOTP_ENABLED = "user.totp_enabled"
    USER_TOTP_DISABLED = "user.totp_disabled"
    SESSION_REVOKED = "session.revoked"
    ADMIN_TOKEN_CREATED = "admin_token.created"
    ADMIN_TOKEN_REVOKED = "admin_token.revoked"
    RETENTION_PURGED = "retention.purged"
    AUDIT_CHECKPOINT = "audit.checkpoint"
    POLICY_CHANGED = "policy.changed"
    NOTIFICATION_SENT = "notification.sent"
    # trust (#11)
    AUDIT_ANCHORED = "audit.anchored"
    WALLET_PAYMENT_REFUSED = "wallet.payment_refused"
    # money path (#10)
    PROXY_INSTANCE_EXPIRED = "proxy.instance_expired"
    # self-hosting (#12)
    USER_PASSWORD_CHANGED = "user.password_changed"
    USER_DELETED = "user.deleted"
    ACCOUNT_PASSWORD_RESET_REQUESTED = "account.password_reset_requested"
    ACCOUNT_PASSWORD_RESET = "account.password_reset"
    ACCOUNT_INVITED = "account.invited"
    PAYMENT_CHECKOUT_CREATED = "wallet.checkout_created"


@dataclass(frozen=True)
class Actor:
    """Who did it: ``kind`` is cli|user|account|api|webhook|system; ``id`` is not secret."""

    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


SYSTEM = Actor("system", "hushgate")


def _canonical(event: AuditEvent) -> bytes:
    created: datetime = event.created_at
    body = {
        "seq": event.seq,
        "event_id": event.event_id,
        "created_at": created.isoformat(timespec="microseconds"),
        "actor": event.actor,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def event_hash(key: bytes, event: AuditEvent) -> str:
    return hmac.new(key, _canonical(event), hashlib.sha256).hexdigest()


def checkpoint_signature(key: bytes, seq: int, chain_hash: str) -> str:
    msg = f"hushgate-audit-checkpoint|{seq}|{chain_hash}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def state_signature(key: bytes, last_seq: int, last_hash: str, checkpoint_seq: int,
                    checkpoint_hash: str | None, anchored_seq: int) -> str:
    """The HMAC of everything the ``audit_state`` row claims."""
    msg = (f"hushgate-audit-state|{last_seq}|{last_hash}|{checkpoint_seq}|"
           f"{checkpoint_hash or ''}|{anchored_seq}").encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


class AuditStateTampered(HushgateError):
    """The audit state row does not carry hushgate's signature (changed with plain SQL, or
    the audit key is not the one that signed it). Appends are refused: run `audit verify`."""

    code = "audit_state_tampered"


def _state_ok(key: bytes, row: Any, last_seq: int | None = None) -> bool:
    expected = state_signature(key, row.last_seq if last_seq is None else last_seq,
                               row.last_hash, row.checkpoint_seq, row.checkpoint_hash,
                               row.anchored_seq)
    return hmac.compare_digest(expected, row.state_sig or "")


def _sign_state(session: Session, key: bytes) -> None:
    """Re-sign the state row as it now stands in this transaction."""
    row = session.execute(select(*_STATE_COLUMNS).where(AuditState.id == 1)).one()
    session.execute(update(AuditState).where(AuditState.id == 1).values(
        state_sig=state_signature(key, row.last_seq, row.last_hash, row.checkpoint_seq,
                                  row.checkpoint_hash, row.anchored_seq)))


_STATE_COLUMNS = (AuditState.last_seq, AuditState.last_hash, AuditState.checkpoint_seq,
                  AuditState.checkpoint_hash, AuditState.anchored_seq, AuditState.state_sig)


def _check_details(details: dict[str, Any]) -> dict[str, Any]:
    # Details are for non-secret facts: refuse anything that looks like a key or password.
    for k in details:
        if any(w in k.lower() for w in ("secret", "password", "token_value", "raw_key")):
            raise ValueError(f"audit details may not carry {k!r}")
    json.dumps(details)  # must be JSON-serializable
    return details


def record(session: Session, key: bytes, actor: Actor | str, action: Action,
           target_type: str | None = None, target_id: str | None = None,
           **details: Any) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction.

    Refuses (``AuditStateTampered``) to extend a state row that hushgate did not sign, so a
    head rewound with plain SQL is never laundered by the next legitimate append. A state row
    never signed yet (a new database, or one from before migration 0007) is adopted. After
    the commit, the database appends the new head to the head file (``Database``)."""
    session.flush()
    session.execute(update(AuditState).where(AuditState.id == 1)
                    .values(last_seq=AuditState.last_seq + 1))
    state = session.execute(select(*_STATE_COLUMNS).where(AuditState.id == 1)).one()
    if state.state_sig is not None and not _state_ok(key, state, state.last_seq - 1):
        raise AuditStateTampered(
            "the audit state was changed outside hushgate or the audit key is not the one "
            "that signed it: run `hushgate audit verify`")
    anchored = state.anchored_seq
    head_path = session.info.get(audit_head.SESSION_PATH)
    if head_path is not None:
        # The highest head the head file holds (its last line, MAC checked) becomes part of
        # the signed state: a head file cut back below it is then detected by verify.
        tail = audit_head.tail_seq(head_path, key)
        if tail is not None and anchored < tail < state.last_seq:
            anchored = tail
    event = AuditEvent(
        seq=state.last_seq, event_id=new_id(), created_at=utcnow(),
        actor=str(actor), action=str(Action(action)), target_type=target_type,
        target_id=target_id, details=_check_details(dict(details)), prev_hash=state.last_hash,
    )
    event.hash = event_hash(key, event)
    session.add(event)
    session.execute(update(AuditState).where(AuditState.id == 1).values(
        last_hash=event.hash, anchored_seq=anchored,
        state_sig=state_signature(key, state.last_seq, event.hash, state.checkpoint_seq,
                                  state.checkpoint_hash, anchored)))
    session.flush()
    session.info[audit_head.SESSION_PENDING] = True
    return event


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    problem: str | None = None
    bad_seq: int | None = None


def set_checkpoint(session: Session, key: bytes, seq: int, chain_hash: str) -> None:
    """Record that events up to ``seq`` (the last with ``chain_hash``) are purged, signed with
    the audit key so ``verify`` can start from it. Must precede the DELETE in the same
    transaction: the database refuses to delete events the checkpoint doesn't cover."""
    row = session.execute(select(*_STATE_COLUMNS).where(AuditState.id == 1)).one()
    if row.state_sig is not None and not _state_ok(key, row):
        raise AuditStateTampered("the audit state was changed outside hushgate: "
                                 "run `hushgate audit verify`")
    session.execute(update(AuditState).where(AuditState.id == 1).values(
        checkpoint_seq=seq, checkpoint_hash=chain_hash,
        checkpoint_sig=checkpoint_signature(key, seq, chain_hash)))
    _sign_state(session, key)


def iter_events(session: Session, batch: int = 1000,
                after_seq: int = 0) -> Iterator[AuditEvent]:
    """Stream events in chain order without loading them all."""
    last = after_seq
    while True:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.seq > last)
                               .order_by(AuditEvent.seq).limit(batch)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq
        session.expunge_all()


def verify(session: Session, key: bytes, head_path: Path | None = None,
           anchors: list[audit_head.HeadEntry] | None = None, *,
           allow_unsigned: bool = False) -> VerifyResult:
    """Recompute the chain from the checkpoint (or genesis) to the signed head.

    Without ``head_path`` this checks only what the database holds (the signed state row, the
    checkpoint, every event): an internal consistency check, not a verdict. With it (see
    ``verdict``) a head record must vouch for the chain: the head file must exist, reach at
    least the head the signed state says was anchored, and agree with the chain; that is what
    detects removal of the newest events together with a replayed older state row. ``anchors``
    (heads collected from an external sink, MAC-checked) must agree with the chain too.
    """
    state = session.get(AuditState, 1)
    if state is None:
        return VerifyResult(False, 0, 0, GENESIS, "audit state row is missing")
    head_seq, head_hash = state.last_seq, state.last_hash

    def fail(problem: str, bad_seq: int | None = None, checked: int = 0) -> VerifyResult:
        return VerifyResult(False, checked, head_seq, head_hash, problem, bad_seq)

    if state.state_sig is None:
        if (state.last_seq or state.checkpoint_seq or state.anchored_seq) \
                and not allow_unsigned:
            return fail("the audit state is not signed: it was changed outside hushgate")
    elif not _state_ok(key, state):
        return fail("the audit state was changed outside hushgate, or the audit key is not "
                    "the one that signed it")
    entries: list[audit_head.HeadEntry] = []
    if head_path is not None:
        try:
            entries = audit_head.read_entries(head_path, key)
        except audit_head.HeadFileError as exc:
            return fail(f"the head file is not trustworthy: {exc}")
    prev_seq, prev_hash = 0, GENESIS
    if state.checkpoint_seq:
        expected = checkpoint_signature(key, state.checkpoint_seq, state.checkpoint_hash or "")
        if not hmac.compare_digest(expected, state.checkpoint_sig or ""):
            return fail("the purge checkpoint's signature does not match", state.checkpoint_seq)
        prev_seq, prev_hash = state.checkpoint_seq, state.checkpoint_hash or ""
    checked = 0
    for ev in iter_events(session, after_seq=0):
        if ev.seq <= prev_seq and checked == 0 and state.checkpoint_seq:
            return fail(f"event {ev.seq} precedes the purge checkpoint", ev.seq)
        if ev.seq != prev_seq + 1:
            return fail(f"event {prev_seq + 1} is missing (next is {ev.seq})", prev_seq + 1,
                        checked)
        if ev.prev_hash != prev_hash:
            return fail(f"event {ev.seq} does not follow event {prev_seq}", ev.seq, checked)
        if not hmac.compare_digest(event_hash(key, ev), ev.hash):
            return fail(f"event {ev.seq} was modified", ev.seq, checked)
        prev_seq, prev_hash = ev.seq, ev.hash
        checked += 1
    if (prev_seq, prev_hash) != (head_seq, head_hash):
        return fail(f"the chain ends at event {prev_seq} but the head says {head_seq}",
                    prev_seq + 1, checked)
    if head_path is not None:
        if head_seq == 0:
            return fail("the audit history is empty: no event vouches for this database "
                        "(`hushgate init` records the first one)", 1)
        if not entries:
            return fail(f"no head record vouches for the {head_seq} events: the head file "
                        f"{head_path} is missing or empty", 1, checked)
        last = entries[-1]
        if last.seq < state.anchored_seq:
            return fail(f"the head file ends at event {last.seq} but the signed audit state "
                        f"says event {state.anchored_seq} was anchored: the head file was "
                        "cut back", last.seq + 1, checked)
        problem = _check_anchor(session, state, last.seq, last.hash, "the head file")
        if problem:
            return fail(problem, min(last.seq, head_seq + 1), checked)
    if anchors is not None:
        if not anchors:
            return fail("no valid external anchor was found", None, checked)
        top = max(anchors, key=lambda e: e.seq)
        problem = _check_anchor(session, state, top.seq, top.hash, "the external anchors")
        if problem:
            return fail(problem, min(top.seq, head_seq + 1), checked)
    return VerifyResult(True, checked, head_seq, head_hash)


def _check_anchor(session: Session, state: AuditState, seq: int, chain_hash: str,
                  source: str) -> str | None:
    """Compare the verified chain with a head anchored outside the database."""
    if seq > state.last_seq:
        return (f"{source} recorded {seq} events but the chain ends at {state.last_seq}:"
                " the newest events were removed")
    if seq > state.checkpoint_seq:
        stored = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == seq))
        if stored != chain_hash:
            return f"event {seq} differs from {source}"
    elif seq == state.checkpoint_seq and seq and state.checkpoint_hash != chain_hash:
        return f"the purge checkpoint at event {seq} differs from {source}"
    return None


def anchor(db: Database, config: Config) -> audit_head.HeadEntry:
    """Append the database's signed head to the head file and record, in the signed state,
    that it was anchored (so cutting the file back below it is detected). Refuses a head that
    is behind or forks from the file's (``HeadFileError``) and a tampered state row."""
    key = config.audit_hmac_key()
    with db.transaction() as session:
        session.execute(update(AuditState).where(AuditState.id == 1)
                        .values(last_seq=AuditState.last_seq))  # the append lock
        row = session.execute(select(*_STATE_COLUMNS).where(AuditState.id == 1)).one()
        if row.state_sig is not None and not _state_ok(key, row):
            raise AuditStateTampered("the audit state was changed outside hushgate")
        entry = audit_head.append_head(config.audit_head_path(), key, row.last_seq,
                                       row.last_hash)
        if row.state_sig is not None and entry.seq > row.anchored_seq:
            session.execute(update(AuditState).where(AuditState.id == 1)
                            .values(anchored_seq=entry.seq))
            _sign_state(session, key)
    return entry


def adopt_unsigned_state(db: Database, config: Config) -> VerifyResult | None:
    """After upgrading to migration 0007: sign a state row that predates signing, once the
    chain it describes verifies (and agrees with the head file, when there is one). None
    when there was nothing to adopt. Run by `hushgate init`, i.e. by the operator."""
    key, head_path = config.audit_hmac_key(), config.audit_head_path()
    with db.read_transaction() as session:
        state = session.get(AuditState, 1)
        if state is None or state.state_sig is not None or not state.last_seq:
            return None
        result = verify(session, key, head_path if head_path.exists() else None,
                        allow_unsigned=True)
    if result.ok:
        with db.transaction() as session:
            row = session.execute(select(*_STATE_COLUMNS).where(AuditState.id == 1)
                                  .with_for_update()).one()
            if row.state_sig is None and (row.last_seq, row.last_hash) == (
                    result.head_seq, result.head_hash):
                _sign_state(session, key)
        anchor(db, config)
    return result


def verdict(db: Database, config: Config, anchors_file: Path | None = None) -> VerifyResult:
    """The one audit verdict every front end shows (CLI, admin UI, API): the chain, the
    signed state, the head file, and optionally heads collected from an external sink. An
    intact chain's head is then anchored, so every later verify must reach it."""
    key, head_path = config.audit_hmac_key(), config.audit_head_path()
    collected = None
    if anchors_file is not None:
        try:
            collected = audit_head.read_anchors(anchors_file, key)
        except audit_head.HeadFileError as exc:
            return VerifyResult(False, 0, 0, GENESIS, str(exc))
    with db.read_transaction() as session:
        result = verify(session, key, head_path=head_path, anchors=collected)
    if result.ok:
        try:
            anchor(db, config)
        except (audit_head.HeadFileError, AuditStateTampered) as exc:
            return VerifyResult(False, result.checked, result.head_seq, result.head_hash,
                                str(exc))
        except OSError as exc:
            return VerifyResult(False, result.checked, result.head_seq, result.head_hash,
                                f"cannot write the head file {head_path}: {exc.strerror}")
    return result


def list_events(session: Session, *, limit: int = 100, before_seq: int | None = None,
                action: str | None = None, target_id: str | None = None,
                actor: str | None = None) -> list[AuditEvent]:
    """Newest first, keyset-paginated by ``before_seq``."""
    q = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit)
    if before_seq is not None:
        q = q.where(AuditEvent.seq < before_seq)
    if action:
        q = q.where(AuditEvent.action == action)
    if target_id:
        q = q.where(AuditEvent.target_id == target_id)
    if actor:
        q = q.where(AuditEvent.actor == actor)
    return list(session.scalars(q))


def event_dict(ev: AuditEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict (matches ``schemas/audit-event.schema.json``)."""
    return {
        "seq": ev.seq, "event_id": ev.event_id, "created_at": ev.created_at.isoformat(),
        "actor": ev.actor, "action": ev.action, "target_type": ev.target_type,
        "target_id": ev.target_id, "details": ev.details, "prev_hash": ev.prev_hash,
        "hash": ev.hash,
    }

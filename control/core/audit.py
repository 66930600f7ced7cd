"""The immutable audit history: an HMAC-SHA256 chain of administrative events.

Each event's hash covers its own fields and the previous event's hash, keyed with the
operator's audit key, so an edit, a removal or a reordering breaks the chain at that point.
Appends are serialized by updating the single ``audit_state`` row first (a row lock on
PostgreSQL; on SQLite every write transaction already holds the write lock), so two writers
can never both extend the same head.
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
    """Append one event to the chain inside the caller's transaction."""
    session.flush()
    session.execute(update(AuditState).where(AuditState.id == 1)
                    .values(last_seq=AuditState.last_seq + 1))
    state = session.execute(select(AuditState.last_seq, AuditState.last_hash)
                            .where(AuditState.id == 1)).one()
    event = AuditEvent(
        seq=state.last_seq, event_id=new_id(), created_at=utcnow(),
        actor=str(actor), action=str(Action(action)), target_type=target_type,
        target_id=target_id, details=_check_details(dict(details)), prev_hash=state.last_hash,
    )
    event.hash = event_hash(key, event)
    session.add(event)
    session.execute(update(AuditState).where(AuditState.id == 1).values(last_hash=event.hash))
    session.flush()
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
    session.execute(update(AuditState).where(AuditState.id == 1).values(
        checkpoint_seq=seq, checkpoint_hash=chain_hash,
        checkpoint_sig=checkpoint_signature(key, seq, chain_hash)))


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


def verify(session: Session, key: bytes, head_path: Path | None = None) -> VerifyResult:
    """Recompute the chain from the checkpoint (or genesis) to the recorded head.

    With ``head_path`` (the append-only head file, see ``control.core.audit_head``) the chain
    must also reach the highest head ever anchored there, with the same hash: this is what
    detects removal of the newest events by someone who bypassed the database triggers.
    """
    state = session.get(AuditState, 1)
    if state is None:
        return VerifyResult(False, 0, 0, GENESIS, "audit state row is missing")
    anchored = None
    if head_path is not None:
        try:
            anchored = audit_head.last_entry(head_path, key)
        except audit_head.HeadFileError as exc:
            return VerifyResult(False, 0, state.last_seq, state.last_hash,
                                f"the head file is not trustworthy: {exc}")
    prev_seq, prev_hash = 0, GENESIS
    if state.checkpoint_seq:
        expected = checkpoint_signature(key, state.checkpoint_seq, state.checkpoint_hash or "")
        if not hmac.compare_digest(expected, state.checkpoint_sig or ""):
            return VerifyResult(False, 0, state.last_seq, state.last_hash,
                                "the purge checkpoint's signature does not match",
                                state.checkpoint_seq)
        prev_seq, prev_hash = state.checkpoint_seq, state.checkpoint_hash or ""
    head_seq, head_hash = state.last_seq, state.last_hash
    checked = 0
    for ev in iter_events(session, after_seq=0):
        if ev.seq <= prev_seq and checked == 0 and state.checkpoint_seq:
            return VerifyResult(False, checked, head_seq, head_hash,
                                f"event {ev.seq} precedes the purge checkpoint", ev.seq)
        if ev.seq != prev_seq + 1:
            return VerifyResult(False, checked, head_seq, head_hash,
                                f"event {prev_seq + 1} is missing (next is {ev.seq})",
                                prev_seq + 1)
        if ev.prev_hash != prev_hash:
            return VerifyResult(False, checked, head_seq, head_hash,
                                f"event {ev.seq} does not follow event {prev_seq}", ev.seq)
        if not hmac.compare_digest(event_hash(key, ev), ev.hash):
            return VerifyResult(False, checked, head_seq, head_hash,
                                f"event {ev.seq} was modified", ev.seq)
        prev_seq, prev_hash = ev.seq, ev.hash
        checked += 1
    if (prev_seq, prev_hash) != (head_seq, head_hash):
        return VerifyResult(False, checked, head_seq, head_hash,
                            f"the chain ends at event {prev_seq} but the head says {head_seq}",
                            prev_seq + 1)
    if anchored is not None:
        problem = _check_anchor(session, state, anchored.seq, anchored.hash)
        if problem:
            return VerifyResult(False, checked, head_seq, head_hash, problem,
                                min(anchored.seq, head_seq + 1))
    return VerifyResult(True, checked, head_seq, head_hash)


def _check_anchor(session: Session, state: AuditState, seq: int, chain_hash: str) -> str | None:
    """Compare the verified chain with the highest head anchored outside the database."""
    if seq > state.last_seq:
        return (f"the head file recorded {seq} events but the chain ends at {state.last_seq}:"
                " the newest events were removed")
    if seq > state.checkpoint_seq:
        stored = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == seq))
        if stored != chain_hash:
            return f"event {seq} differs from the head file"
    elif seq == state.checkpoint_seq and seq and state.checkpoint_hash != chain_hash:
        return f"the purge checkpoint at event {seq} differs from the head file"
    return None


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

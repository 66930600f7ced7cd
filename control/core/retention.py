"""Retention: what the policy says is kept for N days is gone after N days.

- request records: ``retention.request_records_days`` (policy: 90);
- audit events: ``retention.audit_events_days`` (policy: 90), behind a signed checkpoint;
- deleted accounts' personal data: ``retention.deleted_account_erasure_days`` (policy: 30);
- expired wallet holds are released (a crashed proxy must not freeze funds);
- wallet ledger entries: never.

Every purge works in batches of ``retention.batch_size`` rows, each in its own short
transaction, so no table is locked for long and an interrupted run loses nothing. Each run
(except a dry run) is audited with its counts, and the audit chain head is then anchored in
the head file. ``control.core.housekeeping`` runs it every ``retention.schedule_minutes`` inside
the long-running service; ``hushgate retention run`` runs it on demand.

The audit window is also enforced by the database (migration 0002): the purge keeps the
database's window in step with the configuration, and never deletes sooner than the database
allows — a shortened window takes effect only after the previous window has passed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from control.core import audit, audit_head, erasure, wallet
from control.core.audit import SYSTEM, Action, Actor
from control.core.base import utcnow
from control.core.config import Config
from control.core.db import Database
from control.core.models import (
    AuditEvent,
    AuditRetentionWindow,
    AuditState,
    Hold,
    RequestRecord,
)

log = logging.getLogger("hushgate.retention")

#: Allowed skew between this process's clock and the database's (the triggers use the latter).
CLOCK_MARGIN = timedelta(minutes=5)


@dataclass
class RetentionReport:
    """What one run removed (or, for a dry run, would remove)."""

    dry_run: bool
    started_at: datetime
    request_records: int = 0
    audit_events: int = 0
    erased_accounts: int = 0
    expired_holds: int = 0
    batches: int = 0
    audit_window_days: int = 0
    checkpoint_seq: int = 0
    head_problem: str | None = None

    COUNTS: ClassVar[tuple[str, ...]] = ("request_records", "audit_events", "erased_accounts",
                                         "expired_holds")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat()
        return out

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.COUNTS}

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.counts().items())
        return f"{verb} {parts}"


# -- the audit window the database enforces -------------------------------------------------


def enforced_audit_window(session: Session, at: datetime | None = None) -> int | None:
    """The audit retention window (days) the database triggers apply at ``at`` (now)."""
    at = at or utcnow()
    return session.scalar(select(AuditRetentionWindow.days)
                          .where(AuditRetentionWindow.effective_at <= at)
                          .order_by(AuditRetentionWindow.created_at.desc(),
                                    AuditRetentionWindow.id.desc()).limit(1))


def pending_audit_window(session: Session) -> AuditRetentionWindow | None:
    """The most recently recorded window (possibly not yet in effect)."""
    return session.scalar(select(AuditRetentionWindow)
                          .order_by(AuditRetentionWindow.created_at.desc(),
                                    AuditRetentionWindow.id.desc()).limit(1))


def sync_audit_window(session: Session, days: int) -> AuditRetentionWindow | None:
    """Make the database enforce ``days``: at once if it lengthens the window, else once the
    current window has passed (the database refuses anything sooner)."""
    latest = pending_audit_window(session)
    if latest is not None and latest.days == days:
        return None
    now = utcnow()
    current = enforced_audit_window(session, now)
    effective = now if current is None or days >= current else now + timedelta(days=current)
    row = AuditRetentionWindow(days=days, effective_at=effective, created_at=now)
    session.add(row)
    session.flush()
    return row


# -- the purges -----------------------------------------------------------------------------


def _purge_request_records(db: Database, cutoff: datetime, batch: int,
                           report: RetentionReport) -> None:
    if report.dry_run:
        with db.read_transaction() as s:
            report.request_records = int(s.scalar(
                select(func.count()).select_from(RequestRecord)
                .where(RequestRecord.time < cutoff)) or 0)
        return
    doomed = (select(RequestRecord.id).where(RequestRecord.time < cutoff)
              .limit(batch).scalar_subquery())
    stmt = (delete(RequestRecord).where(RequestRecord.id.in_(doomed))
            .execution_options(synchronize_session=False))
    while True:
        with db.transaction() as s:
            removed = int(s.execute(stmt).rowcount or 0)  # type: ignore[attr-defined]
        report.request_records += removed
        report.batches += 1
        if removed < batch:
            return


def _audit_cutoff(db: Database, config: Config, now: datetime,
                  report: RetentionReport) -> datetime:
    days = config.retention["audit_events_days"]
    if not report.dry_run:
        with db.transaction() as s:
            sync_audit_window(s, days)
    with db.read_transaction() as s:
        enforced = enforced_audit_window(s) or days
    report.audit_window_days = max(days, enforced)
    # The triggers judge age by the database's clock: never run ahead of the real time.
    return min(now, utcnow()) - timedelta(days=report.audit_window_days) - CLOCK_MARGIN


def _purge_audit_events(db: Database, config: Config, cutoff: datetime, batch: int,
                        report: RetentionReport) -> None:
    key = config.audit_hmac_key()
    if report.dry_run:
        with db.read_transaction() as s:
            cp = s.scalar(select(AuditState.checkpoint_seq).where(AuditState.id == 1)) or 0
            report.checkpoint_seq = cp
            report.audit_events = _count_prefix(s, cp, cutoff, batch)
        return
    while True:
        with db.transaction() as s:
            cp = s.execute(select(AuditState.checkpoint_seq).where(AuditState.id == 1)
                           .with_for_update()).scalar_one()
            rows = s.execute(select(AuditEvent.seq, AuditEvent.hash, AuditEvent.created_at)
                             .where(AuditEvent.seq > cp).order_by(AuditEvent.seq)
                             .limit(batch)).all()
            # Only a prefix of the chain can go: the checkpoint must be one contiguous cut.
            old = 0
            for row in rows:
                if row.created_at >= cutoff:
                    break
                old += 1
            report.checkpoint_seq = cp
            if old == 0:
                return
            last = rows[old - 1]
            audit.set_checkpoint(s, key, last.seq, last.hash)
            s.execute(delete(AuditEvent).where(AuditEvent.seq > cp, AuditEvent.seq <= last.seq)
                      .execution_options(synchronize_session=False))
        report.audit_events += old
        report.checkpoint_seq = last.seq
        report.batches += 1
        if old < batch:
            return


def _count_prefix(session: Session, after_seq: int, cutoff: datetime, batch: int) -> int:
    """How many events after ``after_seq`` are older than ``cutoff`` before the first that
    isn't (only that prefix of the chain can be purged)."""
    count, last = 0, after_seq
    while True:
        stamps = session.execute(select(AuditEvent.seq, AuditEvent.created_at)
                                 .where(AuditEvent.seq > last).order_by(AuditEvent.seq)
                                 .limit(batch)).all()
        for row in stamps:
            if row.created_at >= cutoff:
                return count
            count += 1
        if len(stamps) < batch:
            return count
        last = stamps[-1].seq


def _sweep_holds(db: Database, config: Config, now: datetime, batch: int,
                 report: RetentionReport) -> None:
    if report.dry_run:
        with db.read_transaction() as s:
            report.expired_holds = int(s.scalar(
                select(func.count()).select_from(Hold)
                .where(Hold.status == "open", Hold.expires_at < now,
                       Hold.instance_id.is_(None))) or 0)
        return
    while True:
        with db.transaction() as s:
            released = wallet.sweep_expired_holds(s, config.audit_hmac_key(), now=now,
                                                  limit=batch)
        report.expired_holds += released
        report.batches += 1
        if released < batch:
            return


def run_retention(db: Database, config: Config, *, dry_run: bool = False,
                  now: datetime | None = None, actor: Actor = SYSTEM) -> RetentionReport:
    """Purge everything past its retention window (see the module docstring).

    ``now`` moves the clock for request records, erasure and holds; audit events are judged
    by the real clock too, because the database enforces their window with its own clock.
    """
    now = now or utcnow()
    r = config.retention
    batch = r["batch_size"]
    report = RetentionReport(dry_run=dry_run, started_at=now)
    _purge_request_records(db, now - timedelta(days=r["request_records_days"]), batch, report)
    _purge_audit_events(db, config, _audit_cutoff(db, config, now, report), batch, report)
    report.erased_accounts = erasure.erase_due_accounts(db, config, now=now, dry_run=dry_run,
                                                        actor=actor)
    _sweep_holds(db, config, now, batch, report)
    if dry_run:
        return report
    with db.transaction() as s:
        if report.audit_events:
            audit.record(s, config.audit_hmac_key(), actor, Action.AUDIT_CHECKPOINT,
                         "audit", None, checkpoint_seq=report.checkpoint_seq)
        audit.record(s, config.audit_hmac_key(), actor, Action.RETENTION_PURGED, "retention",
                     None, **report.counts(), audit_window_days=report.audit_window_days)
    report.head_problem = anchor_head(db, config)
    return report


def anchor_head(db: Database, config: Config) -> str | None:
    """Append the current chain head to the head file (recorded in the signed state) and
    push it to the external anchor sinks; returns a problem or None."""
    from control.core import anchors

    try:
        entry = audit.anchor(db, config)
    except (audit_head.HeadFileError, audit.AuditStateTampered) as exc:
        log.error("audit head not anchored: %s", exc)
        return str(exc)
    problems = anchors.push(config, entry)
    return "; ".join(problems) or None


# -- status for the control plane -----------------------------------------------------------


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None


def retention_status(session: Session, config: Config,
                     now: datetime | None = None) -> dict[str, Any]:
    """What is due now, how old the oldest data is, and when the scheduler runs next."""
    now = now or utcnow()
    r = config.retention
    oldest = session.scalar(select(func.min(RequestRecord.time)))
    record_cutoff = now - timedelta(days=r["request_records_days"])
    records_due = int(session.scalar(select(func.count()).select_from(RequestRecord)
                                     .where(RequestRecord.time < record_cutoff)) or 0)
    enforced = enforced_audit_window(session) or r["audit_events_days"]
    window = max(enforced, r["audit_events_days"])
    cp = session.scalar(select(AuditState.checkpoint_seq).where(AuditState.id == 1)) or 0
    audit_due = int(session.scalar(
        select(func.count()).select_from(AuditEvent)
        .where(AuditEvent.seq > cp,
               AuditEvent.created_at < min(now, utcnow()) - timedelta(days=window)
               - CLOCK_MARGIN)) or 0)
    oldest_event = session.scalar(select(func.min(AuditEvent.created_at)))
    last_run = session.scalar(select(AuditEvent.created_at)
                              .where(AuditEvent.action == Action.RETENTION_PURGED.value)
                              .order_by(AuditEvent.seq.desc()).limit(1))
    pending = pending_audit_window(session)
    return {
        "oldest_request_record": _iso(oldest),
        "oldest_request_record_age_days": (round((now - oldest).total_seconds() / 86400, 2)
                                           if oldest else None),
        "request_records_due": records_due,
        "oldest_audit_event": _iso(oldest_event),
        "audit_events_due": audit_due,
        "audit_window_days_enforced": enforced,
        "audit_window_days_pending": (pending.days if pending and pending.days != enforced
                                      else None),
        "audit_window_pending_from": (_iso(pending.effective_at)
                                      if pending and pending.days != enforced else None),
        "audit_checkpoint_seq": cp,
        "accounts_due_for_erasure": erasure.count_due(session, config, now),
        "expired_holds": int(session.scalar(select(func.count()).select_from(Hold).where(
            Hold.status == "open", Hold.expires_at < now,
            Hold.instance_id.is_(None))) or 0),
        "last_run": _iso(last_run),
        "next_run": _iso(last_run + timedelta(minutes=r["schedule_minutes"]))
        if last_run else None,
        "schedule_minutes": r["schedule_minutes"],
    }

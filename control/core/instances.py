"""Proxy instances: holds and leases belong to a live process.

Each proxy process :func:`register` s at start and :func:`heartbeat` s every
``wallet.heartbeat_seconds``. The sweep (:func:`sweep_dead_instances`, run by housekeeping)
declares an instance dead once its heartbeat is older than
``wallet.instance_dead_after_seconds`` and releases its open holds and leases, audited as
``proxy.instance_expired``. A running request therefore keeps its hold however long it
streams, as long as its process lives; a crashed process frees its customers' funds within
about ``instance_dead_after_seconds``.

A heartbeat of an instance already declared dead returns ``False``: its holds and leases
are gone, so the process must drop its in-memory leases (``LeaseBook.clear``) and register
again. Charges of its finished requests still apply (``control.core.outcomes`` charges by
request id, whatever happened to the hold).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control.core import leases, wallet
from control.core.audit import SYSTEM, Action, record
from control.core.base import new_id, utcnow
from control.core.models import BalanceLease, Hold, ProxyInstance

_PI = ProxyInstance.__table__  # type: ignore[attr-defined]


def register(session: Session, *, host: str | None = None, pid: int | None = None,
             now: datetime | None = None) -> str:
    """Register this process; returns its instance id (holds and leases carry it)."""
    now = now or utcnow()
    instance_id = new_id()
    session.add(ProxyInstance(id=instance_id, host=(host or socket.gethostname())[:255],
                              pid=os.getpid() if pid is None else pid, started_at=now,
                              heartbeat_at=now, status="live"))
    session.flush()
    return instance_id


def heartbeat(session: Session, instance_id: str, *, now: datetime | None = None) -> bool:
    """Record that the instance is alive. False if it was already declared dead or stopped:
    its holds and leases were released, so it must re-register before reserving again."""
    row = session.execute(update(_PI).where(_PI.c.id == instance_id, _PI.c.status == "live")
                          .values(heartbeat_at=now or utcnow()).returning(_PI.c.id)).first()
    return row is not None


def deregister(session: Session, instance_id: str, *, now: datetime | None = None) -> int:
    """Graceful shutdown: release what the instance still holds and mark it stopped. Call
    after its outcomes are committed and its leases returned. Returns the holds released."""
    released = _release_all(session, instance_id)
    session.execute(update(_PI).where(_PI.c.id == instance_id, _PI.c.status == "live")
                    .values(status="stopped", ended_at=now or utcnow()))
    return released


def _release_all(session: Session, instance_id: str) -> int:
    return _release_all_counted(session, instance_id)[0]


def live_instances(session: Session) -> list[ProxyInstance]:
    return list(session.scalars(select(ProxyInstance).where(ProxyInstance.status == "live")
                                .order_by(ProxyInstance.started_at)))


def sweep_dead_instances(session: Session, hmac_key: bytes, *, dead_after_seconds: float,
                         now: datetime | None = None) -> int:
    """Declare instances whose heartbeat stopped dead and release their holds and leases.
    Returns the number of instances expired (each one audited)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=dead_after_seconds)
    dead = list(session.scalars(select(ProxyInstance.id).where(
        ProxyInstance.status == "live", ProxyInstance.heartbeat_at < cutoff)
        .order_by(ProxyInstance.id)))
    expired = 0
    for instance_id in dead:
        # Conditional: a heartbeat that lands meanwhile keeps the instance alive.
        got = session.execute(update(_PI).where(_PI.c.id == instance_id, _PI.c.status == "live",
                                                _PI.c.heartbeat_at < cutoff)
                              .values(status="expired", ended_at=now)
                              .returning(_PI.c.id)).first()
        if got is None:
            continue
        holds = _release_all_counted(session, instance_id)
        expired += 1
        record(session, hmac_key, SYSTEM, Action.PROXY_INSTANCE_EXPIRED, "proxy_instance",
               instance_id, holds_released=holds[0], leases_released=holds[1],
               amount_released=holds[2])
    _release_orphans(session)
    return expired


def _release_orphans(session: Session) -> None:
    """Holds or leases a dead instance took after it was declared dead (its request was in
    flight at the sweep): released on the next sweep, as its own were."""
    gone = select(ProxyInstance.id).where(ProxyInstance.status != "live")
    late = set(session.scalars(select(Hold.instance_id).where(
        Hold.status == "open", Hold.instance_id.in_(gone)).distinct()))
    late |= set(session.scalars(select(BalanceLease.instance_id).where(
        BalanceLease.status == "open", BalanceLease.instance_id.in_(gone)).distinct()))
    for instance_id in sorted(late):
        _release_all_counted(session, instance_id)


def _release_all_counted(session: Session, instance_id: str) -> tuple[int, int, int]:
    hold_rows = list(session.execute(select(Hold.id, Hold.amount).where(
        Hold.instance_id == instance_id, Hold.status == "open")))
    released, amount = 0, 0
    for hid, hamount in hold_rows:
        if wallet.release(session, hid):
            released += 1
            amount += hamount
    n_leases, lease_amount = leases.release_instance_leases(session, instance_id)
    return released, n_leases, amount + lease_amount

"""``hushgate proxy --workers 2``: two processes on one address (SO_REUSEPORT), each its
own registered instance; both serve; a killed worker is replaced; money stays exact; and
SIGTERM shuts every worker down gracefully (leases returned, instances deregistered)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from proxies import ProxyProcess, chat
from sqlalchemy import select

from control.core import wallet
from control.core.models import Hold, LedgerEntry, ProxyInstance, RequestRecord


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (started by any of its threads)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _status(db, pid: int) -> str | None:
    with db.read_transaction() as s:
        return s.scalar(select(ProxyInstance.status).where(ProxyInstance.pid == pid))


def _instances(db, status: str = "live") -> set[str]:
    with db.read_transaction() as s:
        return set(s.scalars(select(ProxyInstance.id).where(ProxyInstance.status == status)))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_two_workers_share_one_port_and_money_stays_exact(make_gateway, tmp_path, sig):
    gw = make_gateway(start=False, balance=100_000_000,
                      wallet={"heartbeat_seconds": 1, "instance_dead_after_seconds": 3})
    pool = ProxyProcess(gw.config.raw, tmp_path, "pool", workers=2)
    served: list[str] = []
    try:
        assert "2 workers listening" in pool.output()
        workers = _children(pool.proc.pid)
        assert len(workers) == 2 and len(_instances(gw.db)) == 2  # one instance each
        for i in range(60):  # a new connection each: the kernel spreads them
            answer = chat(pool.port, gw.key, stream=i % 2 == 1)
            assert answer.delivered, pool.output()
            served.append(answer.request_id)
        with gw.db.read_transaction() as s:  # both took funds: a hold or a lease each
            holders = set(s.scalars(select(Hold.instance_id).distinct()))
        assert holders == _instances(gw.db)

        # a worker that dies is replaced (and its journal taken over by the replacement)
        victim = workers[0]  # our own grandchild, killed by its pid
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _status(gw.db, victim) != "expired" or len(_instances(gw.db)) < 2 or \
                len(_children(pool.proc.pid)) < 2:  # replaced, and its funds swept
            assert time.monotonic() < deadline, pool.output()
            time.sleep(0.2)
        for _ in range(10):
            answer = chat(pool.port, gw.key)
            assert answer.delivered, pool.output()
            served.append(answer.request_id)
    finally:
        code = pool.stop(sig)
    assert code == 0, pool.output()
    assert "Traceback" not in pool.output() and gw.key not in pool.output()
    assert _instances(gw.db) == set()
    with gw.db.read_transaction() as s:
        stopped = set(s.scalars(select(ProxyInstance.id)
                                .where(ProxyInstance.status == "stopped")))
        assert len(stopped) == 2  # graceful shutdown of both survivors
        recs = dict(s.execute(select(RequestRecord.request_id, RequestRecord.cost)).all())
        charges = {r: -a for r, a in s.execute(select(LedgerEntry.reference,
                                                      LedgerEntry.amount)
                                               .where(LedgerEntry.kind == "usage"))}
        assert set(served) <= set(recs) and all(charges[r] == recs[r] > 0 for r in served)
        bal = wallet.get_balance(s, gw.account_id)
        assert bal.balance == wallet.ledger_sum(s, gw.account_id)
        assert bal.balance == 100_000_000 - sum(charges.values())
    assert bal.held == 0  # swept (the killed one), returned at shutdown (the others)

"""Money-path micro-benchmark: database statements and CPU per request, and key checks.

Compares, in the same run and on the same database, the per-request money work of

- ``baseline``: today's proxy path: ``wallet.reserve`` in its own transaction, then
  ``wallet.settle`` in its own transaction, records inserted in batches (the old writer);
- ``hold+batch``: ``wallet.reserve`` per request, then ``outcomes.settle_outcomes`` for a
  batch of ``--batch`` requests in one transaction (charge + hold + record together);
- ``lease+batch``: in-memory ``LeaseBook`` reservations inside a balance lease, then
  ``settle_outcomes`` in batches (the escrow path the proxy will use);

and the key check: ``KeyAuthenticator.cached`` (the fast path) against ``authenticate``.
CPU is this process's CPU time (``time.process_time``: Python + driver; PostgreSQL's own
server CPU is not included). Prints ratios against the baseline.

    .venv/bin/python bench/bench_money.py                       # both backends
    .venv/bin/python bench/bench_money.py --backend sqlite --requests 2000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from sqlalchemy import event  # noqa: E402

from control.core import (  # noqa: E402
    accounts,
    instances,
    keys,
    leases,
    outcomes,
    records,
    schema,
    wallet,
)
from control.core.audit import Actor  # noqa: E402
from control.core.base import utcnow  # noqa: E402
from control.core.config import load_config  # noqa: E402
from control.core.context import Ctx  # noqa: E402
from control.core.db import Database  # noqa: E402

COST, HOLD = 1_000, 20_000


def _record(rid: str, account_id: str, cost: int = 0) -> dict:
    return {"time": utcnow(), "request_id": rid, "account_id": account_id, "key_id": None,
            "endpoint": "chat.completions", "method": "POST", "provider": "p", "model": "m",
            "stream": False, "status": 200, "error_type": None, "input_tokens": 10,
            "output_tokens": 20, "cached_tokens": 0, "estimated": False, "cost": cost,
            "latency_ms": 5, "ttfb_ms": 2, "upstream_ms": 3, "request_bytes": 100,
            "response_bytes": 200, "client_ip": None, "user_agent": None}


class Counter:
    def __init__(self, db: Database) -> None:
        self.n = 0
        event.listen(db.engine, "before_cursor_execute", self._count)

    def _count(self, *args) -> None:
        statement = args[2].lstrip().upper()
        if not statement.startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            self.n += 1


def _measure(name, fn, n, counter):
    counter.n = 0
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return name, counter.n / n, cpu * 1000 / n, wall * 1000 / n


def run(url: str, label: str, n: int, batch: int) -> None:
    db = Database(url, pool_size=4)
    schema.upgrade(db)
    cfg = load_config(overrides={"database": {"url": url}, "auth": {"bcrypt_cost": 4},
                                 "data_dir": tempfile.mkdtemp(prefix="hg-bench-")})
    with db.transaction() as s:
        ctx = Ctx(s, cfg, Actor("cli", "bench"))
        acct = accounts.create_account(ctx, name="Bench", email="b@example.com",
                                       adult_attested=True).id
        wallet.topup(ctx, acct, 10**11)
        _, raw = keys.create_key(ctx, acct)
        inst = instances.register(s)
    counter = Counter(db)
    tag = uuid.uuid4().hex[:8]

    def baseline():
        rows = []
        for i in range(n):
            with db.transaction() as s:
                h = wallet.reserve(s, acct, HOLD)
            with db.transaction() as s:
                wallet.settle(s, h.id, COST)
            rows.append(_record(f"b{tag}{i:07d}", acct, COST))
            if len(rows) == batch:
                with db.transaction() as s:
                    records.insert_records(s, rows)
                rows = []
        if rows:
            with db.transaction() as s:
                records.insert_records(s, rows)

    def hold_batch():
        pending = []
        for i in range(n):
            with db.transaction() as s:
                h = wallet.reserve(s, acct, HOLD, instance_id=inst)
            pending.append(outcomes.Outcome(_record(f"h{tag}{i:07d}", acct), charge=COST,
                                            hold_id=h.id))
            if len(pending) == batch or i == n - 1:
                with db.transaction() as s:
                    outcomes.settle_outcomes(s, pending)
                pending = []

    book = leases.LeaseBook(lease_size=HOLD * batch * 4)

    def lease_batch():
        pending = []
        for i in range(n):
            ticket = book.try_reserve(acct, HOLD)
            if ticket is None:
                for r in book.refills():
                    with db.transaction() as s:
                        book.apply_grant(leases.grant_lease(s, acct, inst, r.want,
                                                            lease_id=r.lease_id))
                ticket = book.try_reserve(acct, HOLD)
            consumed = book.finish(ticket, COST)
            pending.append(outcomes.Outcome(_record(f"l{tag}{i:07d}", acct), charge=COST,
                                            lease_id=ticket.lease_id, lease_amount=consumed))
            if len(pending) == batch or i == n - 1:
                with db.transaction() as s:
                    outcomes.settle_outcomes(s, pending)
                pending = []

    results = [_measure("baseline", baseline, n, counter),
               _measure("hold+batch", hold_batch, n, counter),
               _measure("lease+batch", lease_batch, n, counter)]
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, poll_seconds=0.5).start()
    auth.authenticate(raw)
    auth.poll()
    k = 20 * n
    results.append(_measure("key: authenticate()", lambda: [auth.authenticate(raw)
                                                            for _ in range(k)], k, counter))
    results.append(_measure("key: cached()", lambda: [auth.cached(raw) for _ in range(k)],
                            k, counter))
    auth.stop()
    with db.read_transaction() as s:
        bal = wallet.get_balance(s, acct)
        assert bal.balance == wallet.ledger_sum(s, acct)
    base_cpu = results[0][2]
    print(f"\n{label}: {n} requests, batches of {batch}")
    print(f"{'path':<22}{'stmts/req':>10}{'CPU ms/req':>12}{'wall ms/req':>12}{'CPU x base':>12}")
    for name, stmts, cpu, wall in results:
        ratio = f"{cpu / base_cpu:.3f}" if not name.startswith("key") else "-"
        print(f"{name:<22}{stmts:>10.2f}{cpu:>12.4f}{wall:>12.4f}{ratio:>12}")
    db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            run(f"sqlite:///{tmp}/bench.db", "SQLite", args.requests, args.batch)
    if args.backend in ("postgresql", "both"):
        name = f"hg_bench_{uuid.uuid4().hex[:8]}"
        base = args.pg_admin_url.rpartition("/")[0]
        with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            run(f"{base}/{name}", "PostgreSQL", args.requests, args.batch)
        finally:
            with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()

"""Control-plane benchmark: pages and paginated API lists over a large database.

Seeds N request records (default 1M, spread over the 90-day retention window) and 10k
accounts on SQLite and/or PostgreSQL, then measures the server time (in-process WSGI, no
network) of the dashboard, account list, account page and audit page, and of paginated
API lists, each against a trivial baseline route (/healthz) measured in the same run.

    .venv/bin/python bench/bench_control.py                      # both backends, 1M records
    .venv/bin/python bench/bench_control.py --records 200000 --backend sqlite

Targets: p50 < 300 ms per page; paginated API lists < 100 ms. PostgreSQL uses its own
database created on --pg-admin-url and dropped afterwards.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from control.core import accounts, admin_tokens, audit, schema  # noqa: E402
from control.core.audit import Actor  # noqa: E402
from control.core.base import new_id  # noqa: E402
from control.core.config import load_config  # noqa: E402
from control.core.context import Ctx  # noqa: E402
from control.core.db import Database  # noqa: E402
from control.core.models import Account, LedgerEntry, RequestRecord, Wallet  # noqa: E402
from control.web import create_app  # noqa: E402

MODELS = ["sim-gpt", "sim-claude", "sim-embed", None]
PAGES = {
    "baseline /healthz": "/healthz",
    "dashboard 24h": "/admin/",
    "dashboard 7d": "/admin/?window=7d",
    "accounts list": "/admin/accounts",
    "accounts search": "/admin/accounts?q=user42",
    "account page": "/admin/accounts/{account}",
    "audit log": "/admin/audit",
    "requests list": "/admin/records",
}
API = {
    "GET /api/v1/accounts": "/api/v1/accounts?limit=50",
    "GET /api/v1/accounts (page 100)": "/api/v1/accounts?limit=50&offset=5000",
    "GET /api/v1/audit/events": "/api/v1/audit/events?limit=50",
    "GET /api/v1/records": "/api/v1/records?limit=50",
    "GET /api/v1/accounts/{id}/ledger": "/api/v1/accounts/{account}/ledger?limit=50",
    "GET /api/v1/accounts/{id}/keys": "/api/v1/accounts/{account}/keys",
    "GET /api/v1/stats (24h)": "/api/v1/stats",
}


def seed(db: Database, config, n_records: int, n_accounts: int, n_audit: int) -> str:
    rng = random.Random(7)
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    ids = [new_id() for _ in range(n_accounts)]
    with db.transaction() as s:
        s.execute(insert(Account), [
            {"id": aid, "name": f"User {i}", "email": f"user{i}@example.com",
             "company": f"Company {i % 100}", "status": "active", "adult_attested_at": now,
             "opt_out_non_essential": False,
             "created_at": now - timedelta(minutes=n_accounts - i)}
            for i, aid in enumerate(ids)])
        s.execute(insert(Wallet), [{"account_id": aid, "balance": 5_000_000, "held": 0,
                                    "updated_at": now} for aid in ids])
        s.execute(insert(LedgerEntry), [
            {"account_id": aid, "kind": "topup", "amount": 5_000_000, "balance_after": 5_000_000,
             "idempotency_key": f"seed-{aid}", "actor": "cli:bench", "estimated": False,
             "created_at": now} for aid in ids])
    with db.transaction() as s:
        ctx = Ctx(s, config, Actor("cli", "bench"))
        for aid in ids[:n_audit]:
            ctx.audit(audit.Action.ACCOUNT_CREATED, "account", aid)
        user = accounts.create_user(ctx, username="bench", password="bench password 1")
        _, token = admin_tokens.create_token(ctx, user.id, scope="read")
    print(f"  seeded {n_accounts} accounts, {min(n_audit, n_accounts)} audit events "
          f"in {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    span = 90 * 86400
    batch = 50_000
    cols = [c.name for c in RequestRecord.__table__.columns if c.name != "id"]
    for start in range(0, n_records, batch):
        rows = []
        for i in range(start, min(start + batch, n_records)):
            status = 200 if rng.random() > 0.03 else rng.choice([429, 500, 502])
            rows.append({
                "request_id": f"req-{i}", "time": now - timedelta(seconds=rng.random() * span),
                "account_id": ids[rng.randrange(n_accounts)], "key_id": None,
                "endpoint": "chat.completions", "method": "POST", "provider": "simulator",
                "model": rng.choice(MODELS[:3]), "stream": rng.random() < 0.5, "status": status,
                "error_type": None if status == 200 else "upstream_error",
                "input_tokens": rng.randrange(10, 2000), "output_tokens": rng.randrange(0, 800),
                "cached_tokens": 0, "estimated": False, "cost": rng.randrange(100, 90_000),
                "latency_ms": int(rng.lognormvariate(6, 0.7)), "ttfb_ms": None,
                "upstream_ms": None, "request_bytes": 1000, "response_bytes": 2000,
                "client_ip": None, "user_agent": None})
        _bulk_records(db, cols, rows)
        print(f"\r  records {min(start + batch, n_records):>9}/{n_records}", end="", flush=True)
    if db.dialect == "postgresql":
        with db.engine.connect() as conn:
            conn.exec_driver_sql("COMMIT")
            conn.exec_driver_sql("ANALYZE")
    else:
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    print(f" in {time.perf_counter() - t0:.1f}s", flush=True)
    return token


def _bulk_records(db: Database, cols: list[str], rows: list[dict]) -> None:
    if db.dialect == "postgresql":
        raw = db.engine.raw_connection()
        try:
            cur = raw.cursor()
            with cur.copy(f"COPY request_records ({', '.join(cols)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row([r[c] for c in cols])
            raw.commit()
        finally:
            raw.close()
        return
    with db.transaction() as s:
        s.execute(insert(RequestRecord), rows)


def measure(client, url: str, repeat: int, headers: dict | None = None) -> list[float]:
    client.get(url, headers=headers)  # warm caches and templates
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        resp = client.get(url, headers=headers)
        out.append((time.perf_counter() - t) * 1000)
        if resp.status_code != 200:
            raise SystemExit(f"{url}: HTTP {resp.status_code}")
    return out


def run_backend(backend: str, args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hg-bench-"))
    pg_name = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'bench.db'}"
    else:
        pg_name = f"hg_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{pg_name}"
    print(f"\n== {backend}: {args.records} request records, {args.accounts} accounts", flush=True)
    try:
        config = load_config(overrides={"data_dir": str(tmp), "database": {"url": url},
                                        "auth": {"bcrypt_cost": 4}})
        db = Database.from_config(config)
        schema.upgrade(db)
        token = seed(db, config, args.records, args.accounts, args.audit_events)
        app = create_app(config, db)
        client = app.test_client()
        page = client.get("/admin/login").get_data(as_text=True)
        csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        resp = client.post("/admin/login", data={"username": "bench", "csrf_token": csrf,
                                                 "password": "bench password 1"})
        assert resp.status_code == 302, resp.status_code
        account = client.get("/api/v1/accounts?limit=1", headers={
            "Authorization": f"Bearer {token}"}).get_json()["items"][0]["id"]
        results = []
        base = None
        for name, url in PAGES.items():
            p50 = statistics.median(measure(client, url.format(account=account), args.repeat))
            base = base or p50
            results.append(("page", name, p50, p50 / base, 300))
        auth = {"Authorization": f"Bearer {token}"}
        api_base = statistics.median(measure(client, "/api/v1/me", args.repeat, auth))
        results.append(("api", "baseline GET /api/v1/me", api_base, 1.0, 100))
        for name, url in API.items():
            p50 = statistics.median(measure(client, url.format(account=account), args.repeat,
                                            auth))
            results.append(("api", name, p50, p50 / api_base, 100))
        print(f"{'kind':<5} {'route':<36} {'p50 ms':>8} {'x base':>7} {'target':>7}")
        for kind, name, p50, ratio, target in results:
            flag = "ok" if p50 < target or "baseline" in name else "SLOW"
            print(f"{kind:<5} {name:<36} {p50:>8.1f} {ratio:>7.1f} {'<' + str(target):>7} {flag}")
        db.dispose()
    finally:
        if pg_name:
            with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--audit-events", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    for backend in (["sqlite", "postgresql"] if args.backend == "both" else [args.backend]):
        run_backend(backend, args)


if __name__ == "__main__":
    main()

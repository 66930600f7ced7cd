"""Benchmark the privacy lifecycle: purge N request records, export an account with N records.

    .venv/bin/python bench/bench_lifecycle.py                      # 1M rows, SQLite + PostgreSQL
    .venv/bin/python bench/bench_lifecycle.py --rows 200000 --backend sqlite

Prints rows/s for the purge (target >= 50k rows/s) and for the export, and the export's peak
RSS measured in a separate process with ``resource.getrusage`` (target < 200 MB). PostgreSQL
runs in a database created for the run and dropped afterwards (``--pg-url`` names the server;
default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from control.core import accounts, retention, schema  # noqa: E402
from control.core.audit import Actor  # noqa: E402
from control.core.config import Config, load_config  # noqa: E402
from control.core.context import Ctx  # noqa: E402
from control.core.db import Database  # noqa: E402

COLUMNS = ("request_id", "time", "account_id", "key_id", "endpoint", "method", "provider",
           "model", "stream", "status", "error_type", "input_tokens", "output_tokens",
           "cached_tokens", "estimated", "cost", "latency_ms", "ttfb_ms", "upstream_ms",
           "request_bytes", "response_bytes", "client_ip", "user_agent")
CHUNK = 50_000


def _config(data_dir: str, url: str) -> Config:
    return load_config(overrides={"data_dir": data_dir, "database": {"url": url},
                                  "auth": {"bcrypt_cost": 4}})


def _stamp(when: datetime, i: int, sqlite: bool) -> Any:
    t = when + timedelta(milliseconds=i)  # one request per millisecond, as a busy account
    return t.replace(tzinfo=None).isoformat(" ") if sqlite else t


def _rows(account_id: str, start: int, n: int, when: datetime, sqlite: bool) -> list[tuple]:
    return [(f"bench{i:012d}", _stamp(when, i, sqlite), account_id, None, "chat.completions",
             "POST", "simulator", "sim-gpt", False, 200, None, 100, 50, 0, False, 123, 40, 10,
             30, 1000, 2000, None, None) for i in range(start, start + n)]


def fill(db: Database, account_id: str, n: int, when: datetime) -> float:
    """Insert n records through the driver (COPY on PostgreSQL); returns seconds."""
    t0 = time.perf_counter()
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        if db.dialect == "sqlite":
            cur.execute("BEGIN")
            sql = (f"INSERT INTO request_records ({', '.join(COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(COLUMNS))})")
            for start in range(0, n, CHUNK):
                cur.executemany(sql, _rows(account_id, start, min(CHUNK, n - start), when,
                                           True))
            cur.execute("COMMIT")
        else:
            with cur.copy(f"COPY request_records ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for start in range(0, n, CHUNK):
                    for row in _rows(account_id, start, min(CHUNK, n - start), when, False):
                        copy.write_row(row)
            raw.commit()
            cur.execute("ANALYZE request_records")
            raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - t0


class _Counter:
    """A sink that counts what the export writes (we measure the export, not the disk)."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)


def export_child(data_dir: str, url: str, account_id: str) -> None:
    """Run in a subprocess: export once, print chars, seconds and this process's peak RSS."""
    from control.core import export

    config = _config(data_dir, url)
    db = Database.from_config(config)
    sink = _Counter()
    t0 = time.perf_counter()
    with db.read_transaction() as s:
        export.write_export(s, config, account_id, sink)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    db.dispose()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{sink.chars} {elapsed:.3f} {peak_kb}")


def run_backend(backend: str, rows: int, pg_url: str) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="hg-bench-")
    dbname = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp}/bench.db"
    else:
        import psycopg

        dbname = f"hg_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        url = pg_url.rpartition("/")[0] + f"/{dbname}"
    config = _config(tmp, url)
    db = Database.from_config(config)
    try:
        schema.upgrade(db)
        with db.transaction() as s:
            account_id = accounts.create_account(
                Ctx(s, config, Actor("cli", "bench")), name="Bench", email="bench@example.com",
                adult_attested=True).id
        fill_s = fill(db, account_id, rows, datetime.now(UTC) - timedelta(days=100))

        child = subprocess.run([sys.executable, __file__, "--export-child", tmp, url,
                                account_id], capture_output=True, text=True, check=True)
        chars, export_s, peak_kb = child.stdout.split()
        t0 = time.perf_counter()
        report = retention.run_retention(db, config)
        purge_s = time.perf_counter() - t0
        assert report.request_records == rows, report
        return {"backend": backend, "rows": rows, "fill_s": fill_s,
                "purge_s": purge_s, "purge_rows_s": rows / purge_s,
                "export_s": float(export_s), "export_rows_s": rows / float(export_s),
                "export_mb": int(chars) / 1e6, "export_peak_rss_mb": int(peak_kb) / 1024,
                "batch_size": config.retention["batch_size"]}
    finally:
        db.dispose()
        if dbname:
            import psycopg

            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        for p in sorted(Path(tmp).glob("**/*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        os.rmdir(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=os.environ.get(
        "HUSHGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--export-child", nargs=3, metavar=("DATA_DIR", "URL", "ACCOUNT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        export_child(*args.export_child)
        return
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    ok = True
    for backend in backends:
        r = run_backend(backend, args.rows, args.pg_url)
        purge_ok = r["purge_rows_s"] >= 50_000
        rss_ok = r["export_peak_rss_mb"] < 200
        ok = ok and purge_ok and rss_ok
        print(f"{backend:>10}: {r['rows']:,} records (filled in {r['fill_s']:.1f} s)\n"
              f"{'':>12}purge  {r['purge_s']:7.2f} s  {r['purge_rows_s']:>10,.0f} rows/s  "
              f"(batch {r['batch_size']})  target >= 50,000  {'OK' if purge_ok else 'MISS'}\n"
              f"{'':>12}export {r['export_s']:7.2f} s  {r['export_rows_s']:>10,.0f} rows/s  "
              f"{r['export_mb']:.0f} MB JSON, peak RSS {r['export_peak_rss_mb']:.0f} MB  "
              f"target < 200 MB  {'OK' if rss_ok else 'MISS'}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

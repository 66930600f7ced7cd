"""Proxy benchmark: the simulator directly vs bare mitmdump (reverse, streaming) vs hushgate.

Every server is its own process, so none shares the GIL with the client threads or with
another server: the provider simulator (``python -m control.simulator``), bare ``mitmdump``
and hushgate (``hushgate --config <tmp config> proxy``, the command operators run, with a
funded account and key created beforehand). All three are measured in the same run,
interleaved, over loopback; hushgate keeps its records on SQLite in a temp folder (or on a
temporary PostgreSQL database with ``--backend postgresql``). Prints a table; asserts
nothing.

    .venv/bin/python bench/bench_proxy.py                  # 300 sequential, 2000 @32, 3 rounds
    .venv/bin/python bench/bench_proxy.py --seq 1000 --conc-requests 5000 --rss 20000
    .venv/bin/python bench/bench_proxy.py --backend postgresql

Columns: concurrency 1 latency p50/p99 (ms) and added p50 over the previous row; time to the
first body byte p50 (ms); requests/s at concurrency 32 (median of the rounds, targets taken
in turn in each round); that figure as a ratio of bare mitmdump's; CPU time the server
process spent per request at concurrency 32 (utime + stime from /proc/<pid>/stat; steadier
than req/s on a busy machine), and that figure as a ratio of bare mitmdump's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "proxy"))

import yaml  # noqa: E402
from proxy_helpers import PROVIDER_KEY, PROVIDER_KEY_ENV, catalog, setup_account  # noqa: E402

from control.core import schema  # noqa: E402
from control.core.config import load_config  # noqa: E402
from control.core.db import Database  # noqa: E402

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server subprocess; ``start()`` returns once its port accepts connections."""

    def __init__(self, name: str, argv: list[str], port: int,
                 env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.name, self.argv, self.port, self.env, self.log = name, argv, port, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Server:
        out = self.log.open("wb") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(self.env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}"
                                   + (f"; see {self.log}" if self.log else ""))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start")

    def rss_mb(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all threads) so far."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _body(stream: bool, model: str) -> bytes:
    return json.dumps({"model": model, "stream": stream, "max_tokens": 16,
                       "messages": [{"role": "user", "content": "benchmark"}]}).encode()


ERRORS: dict[int, int] = {}  # port -> non-200 answers (printed, not asserted)


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}

    def call(self, body: bytes) -> tuple[float, float]:
        """(total seconds, seconds to the first body byte)."""
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", body=body, headers=self.headers)
        resp = self.conn.getresponse()
        first = resp.read(1)
        t1 = time.perf_counter()
        resp.read()
        if resp.status != 200 or not first:
            ERRORS[self.conn.port] = ERRORS.get(self.conn.port, 0) + 1
        return time.perf_counter() - t0, t1 - t0

    def close(self) -> None:
        self.conn.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] * 1000


def sequential(targets: dict[str, tuple[int, str, str]], n: int, stream: bool):
    """Interleaved: one request to each target in turn, n rounds (after 20 warm-up)."""
    clients = {name: Client(port, key) for name, (port, key, _) in targets.items()}
    lat: dict[str, list[float]] = {name: [] for name in targets}
    ttfb: dict[str, list[float]] = {name: [] for name in targets}
    for i in range(n + 20):
        for name, (_, _, model) in targets.items():
            total, first = clients[name].call(_body(stream, model))
            if i >= 20:
                lat[name].append(total)
                ttfb[name].append(first)
    for c in clients.values():
        c.close()
    return lat, ttfb


def throughput(port: int, key: str, model: str, n: int, stream: bool, conc: int = 32) -> float:
    local = threading.local()
    clients: list[Client] = []
    body = _body(stream, model)

    def one(_: int) -> None:
        if not hasattr(local, "c"):
            local.c = Client(port, key)
            clients.append(local.c)
        local.c.call(body)

    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(one, range(conc)))  # open the connections (not timed)
        t0 = time.perf_counter()
        list(pool.map(one, range(n)))
        elapsed = time.perf_counter() - t0
    for c in clients:
        c.close()
    return n / elapsed


def rounds_throughput(targets: dict[str, tuple[int, str, str]], servers: dict[str, Server],
                      n: int, stream: bool, rounds: int
                      ) -> tuple[dict[str, float], dict[str, float]]:
    """Median req/s per target and the server's CPU ms per request (the proxy's own
    process; the simulator's for ``direct``, from /proc/<pid>/stat utime + stime over the
    round); each round visits every target once, in a
    rotated order."""
    got: dict[str, list[float]] = {name: [] for name in targets}
    cpu: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            port, key, model = targets[name]
            before = servers[name].cpu_seconds()
            got[name].append(throughput(port, key, model, n, stream))
            cpu[name].append((servers[name].cpu_seconds() - before) * 1000 / (n + 32))
    return ({name: statistics.median(v) for name, v in got.items()},
            {name: statistics.median(v) for name, v in cpu.items()})


def write_config(tmp: Path, db_url: str, sim_url: str) -> Path:
    data = {"data_dir": str(tmp / "data"), "database": {"url": db_url},
            "auth": {"bcrypt_cost": 4},
            "proxy": {"record_batch_size": 500, "record_flush_ms": 200},
            **catalog(sim_url)}
    path = tmp / "hushgate.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=300, help="sequential rounds per target")
    parser.add_argument("--conc-requests", type=int, default=2000,
                        help="requests per target and round at concurrency 32")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds")
    parser.add_argument("--rss", type=int, default=0,
                        help="requests through hushgate for the RSS growth check (e.g. 20000)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--only", choices=("json", "stream"), default=None)
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp folder (config, database, server logs)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hushgate-bench-"))
    pg_name = None
    if args.backend == "postgresql":
        import psycopg

        pg_name = f"hg_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        db_url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{pg_name}"
    else:
        db_url = f"sqlite:///{tmp}/data/hushgate.db"

    sim_port, bare_port, hg_port = _free_port(), _free_port(), _free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim = Server("simulator", [sys.executable, "-m", "control.simulator", "--port",
                               str(sim_port), "--log-level", "WARNING"], sim_port,
                 log=tmp / "simulator.log")
    bare = Server("mitmdump", [
        str(BIN / "mitmdump"), "--mode", f"reverse:{sim_url}", "--listen-host", "127.0.0.1",
        "-p", str(bare_port), "-q", "--set", "connection_strategy=lazy",
        "--set", "http2=false", "--set", "stream_large_bodies=1",
        "--set", f"confdir={tmp / 'bare-mitm'}"], bare_port, log=tmp / "mitmdump.log")
    config_path = write_config(tmp, db_url, sim_url)
    config = load_config(config_path)
    db = Database.from_config(config)
    schema.upgrade(db)
    _, _, key = setup_account(config, db, 10**12 // 10)
    hushgate = Server("hushgate", [str(BIN / "hushgate"), "--config", str(config_path), "proxy",
                                   "--host", "127.0.0.1", "--port", str(hg_port)], hg_port,
                      env={PROVIDER_KEY_ENV: PROVIDER_KEY}, log=tmp / "hushgate.log")
    servers = [sim, bare, hushgate]
    by_name = {"direct": sim, "mitmdump": bare, "hushgate": hushgate}
    targets = {"direct": (sim_port, PROVIDER_KEY, "sim-gpt"),
               "mitmdump": (bare_port, PROVIDER_KEY, "sim-gpt"),
               "hushgate": (hg_port, key, "gpt-test")}
    ok = False
    try:
        for server in servers:
            server.start()
        print(f"{os.cpu_count()} CPUs; hushgate on {args.backend}; "
              f"{args.seq} sequential rounds, {args.rounds} x {args.conc_requests} @32")
        print(f"{'':10} {'mode':7} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} "
              f"{'ttfb p50':>9} {'req/s@32':>9} {'vs mitmdump':>12} {'cpu ms/req':>11} "
              f"{'cpu vs mitmdump':>16}")
        modes = (False, True) if args.only is None else (args.only == "stream",)
        for stream in modes:
            lat, ttfb = sequential(targets, args.seq, stream)
            rps, cpu = rounds_throughput(targets, by_name, args.conc_requests, stream,
                                         args.rounds)
            prev = None
            for name in targets:
                p50 = pct(lat[name], 0.5)
                added = "" if prev is None else f"{p50 - prev:8.2f}"
                print(f"{name:10} {'stream' if stream else 'json':7} {p50:8.2f} "
                      f"{pct(lat[name], 0.99):8.2f} {added:>8} {pct(ttfb[name], 0.5):9.2f} "
                      f"{rps[name]:9.0f} {rps[name] / rps['mitmdump']:11.2f}x "
                      f"{cpu[name]:11.2f} {cpu[name] / cpu['mitmdump']:15.2f}x")
                prev = p50
        if args.rss:
            before = hushgate.rss_mb()
            throughput(hg_port, key, "gpt-test", args.rss, False)
            time.sleep(1)
            print(f"RSS (hushgate process): {before:.1f} MB -> {hushgate.rss_mb():.1f} MB "
                  f"after {args.rss} more requests")
        if ERRORS:
            names = {t[0]: n for n, t in targets.items()}
            print("non-200 answers:", {names.get(p, p): n for p, n in ERRORS.items()})
        ok = True
    finally:
        for server in reversed(servers):
            server.stop()  # hushgate flushes its records on SIGTERM
        if ERRORS:
            from sqlalchemy import text

            with db.read_transaction() as s:
                print("hushgate outcomes:", s.execute(text(
                    "select status, error_type, count(*) from request_records "
                    "group by status, error_type")).all())
        db.dispose()
        if pg_name:
            import psycopg

            with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"config, database and server logs kept in {tmp}")


if __name__ == "__main__":
    main()

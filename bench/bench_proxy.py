"""Proxy benchmark: the simulator directly vs bare mitmdump (reverse, streaming) vs hushgate.

All three are measured in the same run, interleaved, over loopback, on SQLite in a temp
folder. Prints a table; asserts nothing.

    .venv/bin/python bench/bench_proxy.py                 # defaults: 300 sequential, 2000 @32
    .venv/bin/python bench/bench_proxy.py --seq 1000 --conc-requests 5000 --rss 20000

Columns: concurrency 1 latency p50/p99 (ms) and added p50 over the previous row; concurrency
32 requests/s; streaming time to first byte p50. Ratios are against bare mitmdump.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "proxy"))

from proxy_helpers import (  # noqa: E402
    PROVIDER_KEY,
    PROVIDER_KEY_ENV,
    catalog,
    make_config,
    setup_account,
)

from control.core import schema  # noqa: E402
from control.core.db import Database  # noqa: E402
from proxy_addons.runner import ProxyServer  # noqa: E402


class BareMitmdump:
    """``mitmdump`` in reverse mode to the simulator, streaming every body: the floor for
    hushgate. A subprocess: two mitmproxy masters can't share one process (global ctx)."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.port, self.proc = upstream, _free_port(), None

    def start(self):
        exe = str(Path(sys.executable).with_name("mitmdump"))
        self.proc = subprocess.Popen(
            [exe, "--mode", f"reverse:{self.upstream}", "--listen-host", "127.0.0.1",
             "-p", str(self.port), "-q", "--set", "connection_strategy=lazy",
             "--set", "http2=false", "--set", "stream_large_bodies=1",
             "--set", f"confdir={tempfile.mkdtemp(prefix='bare-mitm-')}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mitmdump did not start")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body(stream: bool, model: str) -> bytes:
    return json.dumps({"model": model, "stream": stream, "max_tokens": 16,
                       "messages": [{"role": "user", "content": "benchmark"}]}).encode()


ERRORS: dict[int, int] = {}  # port -> non-200 answers (printed, not asserted)


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, key: str | None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"content-type": "application/json",
                        "authorization": f"Bearer {key or PROVIDER_KEY}"}

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


def sequential(targets, n: int, stream: bool):
    """Interleaved: one request to each target in turn, n rounds."""
    clients = {name: Client(port, key) for name, (port, key, _) in targets.items()}
    lat = {name: [] for name in targets}
    ttfb = {name: [] for name in targets}
    for i in range(n + 20):
        for name, (_, _, model) in targets.items():
            total, first = clients[name].call(_body(stream, model))
            if i >= 20:  # warm-up
                lat[name].append(total)
                ttfb[name].append(first)
    for c in clients.values():
        c.close()
    return lat, ttfb


def throughput(port: int, key: str | None, model: str, n: int, stream: bool, conc: int = 32):
    local = threading.local()

    def one(_):
        if not hasattr(local, "c"):
            local.c = Client(port, key)
        local.c.call(_body(stream, model))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - t0)


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=300, help="sequential rounds per target")
    parser.add_argument("--conc-requests", type=int, default=2000,
                        help="requests per target at concurrency 32")
    parser.add_argument("--rss", type=int, default=0,
                        help="requests through hushgate for the RSS growth check (e.g. 20000)")
    args = parser.parse_args()

    from control.simulator import Simulator

    os.environ[PROVIDER_KEY_ENV] = PROVIDER_KEY
    tmp = Path(tempfile.mkdtemp(prefix="hushgate-bench-"))
    sim = Simulator(port=0)
    sim.start()
    config = make_config(tmp, f"sqlite:///{tmp}/data/hushgate.db",
                         proxy={"record_batch_size": 500, "record_flush_ms": 200},
                         **catalog(sim.base_url))
    db = Database.from_config(config)
    schema.upgrade(db)
    _, _, key = setup_account(config, db, 10**12 // 10)
    proxy = ProxyServer(config, listen_port=0).start()
    bare = BareMitmdump(sim.base_url).start()
    sim_port = int(sim.base_url.rsplit(":", 1)[1].split("/")[0])
    targets = {"direct": (sim_port, None, "sim-gpt"), "mitmdump": (bare.port, None, "sim-gpt"),
               "hushgate": (proxy.port, key, "gpt-test")}
    try:
        print(f"{'':10} {'mode':7} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} "
              f"{'ttfb p50':>9} {'req/s@32':>9} {'vs mitmdump':>12}")
        for stream in (False, True):
            lat, ttfb = sequential(targets, args.seq, stream)
            rps = {name: throughput(port, k, model, args.conc_requests, stream)
                   for name, (port, k, model) in targets.items()}
            prev = None
            for name in targets:
                p50 = pct(lat[name], 0.5)
                added = "" if prev is None else f"{p50 - prev:8.2f}"
                ratio = rps[name] / rps["mitmdump"]
                print(f"{name:10} {'stream' if stream else 'json':7} {p50:8.2f} "
                      f"{pct(lat[name], 0.99):8.2f} {added:>8} {pct(ttfb[name], 0.5):9.2f} "
                      f"{rps[name]:9.0f} {ratio:11.2f}x")
                prev = p50
        if ERRORS:
            names = {t[0]: n for n, t in targets.items()}
            print("non-200 answers:", {names.get(p, p): n for p, n in ERRORS.items()})
            proxy.drain(60)
            from sqlalchemy import text

            with db.read_transaction() as s:
                print("hushgate outcomes:", s.execute(text(
                    "select status, error_type, count(*) from request_records "
                    "group by status, error_type")).all())
        if args.rss:
            proxy.drain(60)
            before = rss_mb()
            throughput(proxy.port, key, "gpt-test", args.rss, False)
            proxy.drain(120)
            print(f"RSS (bench process: simulator + mitmdump + hushgate): {before:.1f} MB -> "
                  f"{rss_mb():.1f} MB after {args.rss} more hushgate requests")
    finally:
        proxy.stop()
        bare.stop()
        sim.stop()
        db.dispose()


if __name__ == "__main__":
    main()

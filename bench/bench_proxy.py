"""Proxy benchmark (issue #10's targets): hushgate against bare mitmdump, driven by ``wrk``.

Every server is its own process, in front of the same fast upstream (``bench/fast_upstream.py``:
aiohttp on uvloop; checked to be >= 10x mitmdump's req/s, so it is never the bottleneck):
``direct`` (the upstream itself), bare ``mitmdump`` in reverse mode with streaming on
(``stream_large_bodies=1``), ``hushgate`` as operators run it (``hushgate --config X proxy``,
bcrypt cost 12, the default config: outcome journal, leases) and ``hushgate --workers 2``.
Rounds are interleaved (the order rotates) and medians are printed: the machine is shared.

    .venv/bin/python bench/bench_proxy.py                       # SQLite
    .venv/bin/python bench/bench_proxy.py --backend postgresql
    .venv/bin/python bench/bench_proxy.py --rounds 5 --seconds 8 --rss 20000

Measured: req/s at concurrency 32 (``wrk -t2 -c32``), JSON and streamed; p50/p99 at
concurrency 1 (``wrk -t1 -c1 --latency``); CPU per request of the server process(es)
(utime + stime from /proc over the wrk run, divided by the requests wrk completed); time to
the first streamed body byte (a sequential Python client, interleaved); RSS growth of the
hushgate process over ``--rss`` requests after warm-up. Prints ratios against mitmdump and
the issue's targets; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
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

    def pids(self) -> list[int]:
        """The server's process and, for ``--workers``, its worker processes."""
        assert self.proc is not None
        out = [self.proc.pid]
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            out += [int(p) for p in (task / "children").read_text().split()]
        return out

    def rss_mb(self) -> float:
        total = 0.0
        for pid in self.pids():
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process(es), all threads, so far."""
        total = 0.0
        for pid in self.pids():
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

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


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] * 1000


def ttfb(targets: dict[str, tuple[int, str, str]], n: int) -> dict[str, float]:
    """Median time to the first streamed body byte (ms), one request per target in turn."""
    conns = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=30)
             for name, (port, _, _) in targets.items()}
    got: dict[str, list[float]] = {name: [] for name in targets}
    for i in range(n + 20):
        for name, (_, key, model) in targets.items():
            conn = conns[name]
            t0 = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body=_body(True, model),
                         headers={"content-type": "application/json",
                                  "authorization": f"Bearer {key}"})
            resp = conn.getresponse()
            resp.read(1)
            first = time.perf_counter() - t0
            resp.read()
            if i >= 20:
                got[name].append(first)
    for c in conns.values():
        c.close()
    return {name: pct(v, 0.5) for name, v in got.items()}


LUA = """wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def wrk(port: int, key: str, model: str, stream: bool, *, conc: int, seconds: int,
        tmp: Path) -> dict[str, float]:
    """One wrk run: requests, req/s, p50/p99 ms, non-2xx answers."""
    script = tmp / f"wrk-{port}-{int(stream)}.lua"
    script.write_text(LUA.format(body=_body(stream, model).decode(), key=key))
    threads = 1 if conc == 1 else 2
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conc}", f"-d{seconds}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}/v1/chat/completions"],
                         capture_output=True, text=True, check=True).stdout
    res = {"requests": float(re.search(r"(\d+) requests in", out).group(1)),
           "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
           "errors": float(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)",
                                                          out)) else 0.0}
    for label, name in (("50%", "p50"), ("99%", "p99")):
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        res[name] = float(m.group(1)) * scale
    return res


def measure(targets: dict[str, tuple[int, str, str]], servers: dict[str, Server], *,
            stream: bool, conc: int, seconds: int, rounds: int, tmp: Path
            ) -> dict[str, dict[str, float]]:
    """Medians over interleaved rounds (rotated order) of wrk's figures and CPU ms/req."""
    got: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    names = list(targets)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            port, key, model = targets[name]
            before = servers[name].cpu_seconds()
            res = wrk(port, key, model, stream, conc=conc, seconds=seconds, tmp=tmp)
            res["cpu"] = (servers[name].cpu_seconds() - before) * 1000 / max(1, res["requests"])
            got[name].append(res)
    return {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            for name, runs in got.items()}


def write_config(tmp: Path, db_url: str, upstream: str, journal: bool = True) -> Path:
    """The configuration operators run (defaults: bcrypt cost 12, journal, leases)."""
    data = {"data_dir": str(tmp / "data"), "database": {"url": db_url},
            "proxy": {"outcome_journal": journal}, **catalog(upstream)}
    path = tmp / "hushgate.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--ttfb", type=int, default=200, help="sequential streamed requests")
    parser.add_argument("--rss", type=int, default=20000,
                        help="requests through hushgate for the RSS growth check")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-workers", action="store_true", help="skip --workers 2")
    parser.add_argument("--no-journal", action="store_true",
                        help="proxy.outcome_journal: false (answers wait for the database)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp folder (config, database, server logs)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install -y wrk")

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

    up_port, bare_port, hg_port, hg2_port = (_free_port() for _ in range(4))
    upstream = f"http://127.0.0.1:{up_port}"
    up = Server("upstream", [sys.executable, str(ROOT / "bench" / "fast_upstream.py"),
                             "--port", str(up_port)], up_port, log=tmp / "upstream.log")
    bare = Server("mitmdump", [
        str(BIN / "mitmdump"), "--mode", f"reverse:{upstream}", "--listen-host", "127.0.0.1",
        "-p", str(bare_port), "-q", "--set", "connection_strategy=lazy",
        "--set", "http2=false", "--set", "stream_large_bodies=1",
        "--set", f"confdir={tmp / 'bare-mitm'}"], bare_port, log=tmp / "mitmdump.log")
    config_path = write_config(tmp, db_url, upstream, journal=not args.no_journal)
    config = load_config(config_path)
    db = Database.from_config(config)
    schema.upgrade(db)
    _, _, key = setup_account(config, db, 10**11)
    env = {PROVIDER_KEY_ENV: PROVIDER_KEY}
    hg = Server("hushgate", [str(BIN / "hushgate"), "--config", str(config_path), "proxy",
                             "--host", "127.0.0.1", "--port", str(hg_port)], hg_port,
                env=env, log=tmp / "hushgate.log")
    servers = {"direct": up, "mitmdump": bare, "hushgate": hg}
    targets = {"direct": (up_port, PROVIDER_KEY, "sim-gpt"),
               "mitmdump": (bare_port, PROVIDER_KEY, "sim-gpt"),
               "hushgate": (hg_port, key, "gpt-test")}
    if not args.no_workers:
        servers["hushgate-w2"] = Server(
            "hushgate --workers 2", [str(BIN / "hushgate"), "--config", str(config_path),
                                     "proxy", "--workers", "2", "--host", "127.0.0.1",
                                     "--port", str(hg2_port)], hg2_port, env=env,
            log=tmp / "hushgate-w2.log")
        targets["hushgate-w2"] = (hg2_port, key, "gpt-test")
    ok = False
    try:
        for server in servers.values():
            server.start(timeout=90)
        print(f"{os.cpu_count()} CPUs; hushgate on {args.backend}, bcrypt cost "
              f"{config.auth['bcrypt_cost']}; {args.rounds} interleaved rounds of "
              f"{args.seconds:g} s per wrk run; medians")
        for name in ("hushgate", "hushgate-w2"):  # warm-up: the key's one bcrypt, leases
            if name in targets:
                wrk(*targets[name], False, conc=4, seconds=2, tmp=tmp)
        c32 = {stream: measure(targets, servers, stream=stream, conc=32,
                               seconds=args.seconds, rounds=args.rounds, tmp=tmp)
               for stream in (False, True)}
        c1 = {stream: measure({k: v for k, v in targets.items() if k != "hushgate-w2"},
                              servers, stream=stream, conc=1, seconds=args.seconds,
                              rounds=args.rounds, tmp=tmp) for stream in (False, True)}
        first = ttfb({k: v for k, v in targets.items() if k in ("mitmdump", "hushgate")},
                     args.ttfb)
        print(f"{'':12} {'mode':6} {'req/s@32':>9} {'x mitm':>7} {'cpu ms/req':>11} "
              f"{'x mitm':>7} {'p50@1':>7} {'p99@1':>7} {'non-2xx':>8}")
        for stream in (False, True):
            for name in targets:
                r, one = c32[stream][name], c1[stream].get(name)
                m, m1 = c32[stream]["mitmdump"], c1[stream]["mitmdump"]
                lat = f"{one['p50']:7.2f} {one['p99']:7.2f}" if one else f"{'':7} {'':7}"
                print(f"{name:12} {'stream' if stream else 'json':6} {r['rps']:9.0f} "
                      f"{r['rps'] / m['rps']:6.2f}x {r['cpu']:11.3f} "
                      f"{r['cpu'] / m['cpu']:6.2f}x {lat} {r['errors']:8.0f}")
            del m1
        print()
        print("targets (issue #10)                         measured")
        for stream in (False, True):
            mode = "streamed" if stream else "JSON"
            r, m = c32[stream]["hushgate"], c32[stream]["mitmdump"]
            one, m1 = c1[stream]["hushgate"], c1[stream]["mitmdump"]
            print(f"req/s @32 {mode:8} >= 0.8x mitmdump          {r['rps'] / m['rps']:.2f}x "
                  f"({r['rps']:.0f} vs {m['rps']:.0f})")
            print(f"added p50 @1 {mode:8} <= 1 ms                  "
                  f"{one['p50'] - m1['p50']:+.2f} ms")
            print(f"p99 @1 {mode:8} <= 2x mitmdump's             {one['p99'] / m1['p99']:.2f}x "
                  f"({one['p99']:.2f} vs {m1['p99']:.2f} ms)")
            print(f"CPU/request @32 {mode:8} <= 1.3x mitmdump    {r['cpu'] / m['cpu']:.2f}x "
                  f"({r['cpu']:.3f} vs {m['cpu']:.3f} ms)")
        print(f"first streamed byte: within 1 ms of mitmdump  "
              f"{first['hushgate'] - first['mitmdump']:+.2f} ms "
              f"({first['hushgate']:.2f} vs {first['mitmdump']:.2f} ms)")
        d = c32[False]["direct"]["rps"] / c32[False]["mitmdump"]["rps"]
        print(f"upstream not the bottleneck: direct >= 10x    {d:.1f}x")
        if "hushgate-w2" in targets:
            for stream in (False, True):
                w2, w1 = c32[stream]["hushgate-w2"], c32[stream]["hushgate"]
                print(f"--workers 2 CPU/request {'stream' if stream else 'json':6} within 10% "
                      f"  {w2['cpu'] / w1['cpu']:.2f}x of one worker; req/s {w2['rps']:.0f} "
                      f"vs {w1['rps']:.0f}")
        if args.rss:
            wrk(hg_port, key, "gpt-test", False, conc=32, seconds=3, tmp=tmp)  # warm-up
            before = hg.rss_mb()
            done = 0.0
            while done < args.rss:
                done += wrk(hg_port, key, "gpt-test", False, conc=32, seconds=2,
                            tmp=tmp)["requests"]
            time.sleep(1)
            print(f"RSS growth < 20 MB over {args.rss} requests   "
                  f"{hg.rss_mb() - before:+.1f} MB ({before:.1f} -> {hg.rss_mb():.1f} MB, "
                  f"{done:.0f} requests)")
        ok = True
    finally:
        for server in reversed(list(servers.values())):
            server.stop()
        with db.read_transaction() as s:
            from sqlalchemy import text

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

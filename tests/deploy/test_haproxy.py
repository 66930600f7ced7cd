"""Scale-out with Debian's HAProxy: deploy/haproxy/haproxy.cfg (its ports substituted) in
front of two `hushgate proxy` processes on one PostgreSQL and Redis, with the simulator as
the provider. Requests through HAProxy with the openai and anthropic SDKs reach both proxies;
after one proxy is SIGKILLed, every request still succeeds; afterwards every answered request
is charged exactly once and balance == Σ ledger.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
from proxy_helpers import PROVIDER_KEY, PROVIDER_KEY_ENV, catalog, setup_account  # noqa: E402

from control.core import instances, wallet  # noqa: E402
from control.core.base import utcnow  # noqa: E402
from control.core.config import load_config  # noqa: E402
from control.core.db import Database  # noqa: E402
from control.core.models import LedgerEntry, RequestRecord  # noqa: E402
from control.simulator import Simulator  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
HUSHGATE = Path(sys.executable).with_name("hushgate")


def wait_healthy(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing healthy on port {port}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Farm:
    db: Database
    account_id: str
    key: str
    lb_port: int
    proxies: list[subprocess.Popen]
    stats_socket: Path
    config: Any = None

    def server_stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's own view (stats socket, "show stat"): per server, its status and the
        number of requests it was sent."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, ln.split(","), strict=False)) for ln in lines[1:] if ln]
        return {r["svname"]: r for r in rows if r["pxname"] == "hushgate_proxies"
                and r["svname"] not in ("BACKEND", "FRONTEND")}

    def openai(self):
        import openai

        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.lb_port}/v1", api_key=self.key,
                             max_retries=0, timeout=30)

    def anthropic(self):
        import anthropic

        return anthropic.Anthropic(base_url=f"http://127.0.0.1:{self.lb_port}",
                                   api_key=self.key, max_retries=0, timeout=30)

    def usage_entries(self) -> int:
        with self.db.read_transaction() as s:
            return len(s.scalars(select(LedgerEntry).where(
                LedgerEntry.account_id == self.account_id, LedgerEntry.kind == "usage")).all())


@pytest.fixture
def farm(tmp_path: Path, backend: str, db_url: str, port_factory) -> Iterator[Farm]:
    assert backend == "postgresql"  # several processes share one database: PostgreSQL
    assert shutil.which("haproxy"), "haproxy (Debian package) is needed; ./dev test installs it"
    sim = Simulator(port=0)
    sim.start()
    ports = [port_factory(), port_factory()]
    lb_port = port_factory()
    cfg_path = tmp_path / "hushgate.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "database": {"url": db_url, "pool_size": 4},
        "auth": {"bcrypt_cost": 4, "revocation_poll_ms": 200,
                 "redis_url": "redis://127.0.0.1:6379/0"},
        "proxy": {"record_flush_ms": 20, "upstream_timeout_ms": 10_000},
        **catalog(sim.base_url)}))
    config = load_config(cfg_path)
    db = Database.from_config(config)
    account_id, _, key = setup_account(config, db, 10_000_000)
    env = {**os.environ, "HUSHGATE_CONFIG": str(cfg_path), PROVIDER_KEY_ENV: PROVIDER_KEY}
    procs: list[subprocess.Popen] = []
    haproxy = None
    stats = tmp_path / "haproxy.sock"
    try:
        for port in ports:
            procs.append(subprocess.Popen([str(HUSHGATE), "proxy", "--port", str(port)],
                                          env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        for port in ports:
            wait_healthy(port)
        text = HAPROXY_CFG.read_text()
        for old, new in (("127.0.0.1:8080", f"127.0.0.1:{lb_port}"),
                         ("127.0.0.1:8081", f"127.0.0.1:{ports[0]}"),
                         ("127.0.0.1:8082", f"127.0.0.1:{ports[1]}"),
                         ("/run/haproxy/hushgate.sock", str(stats)),
                         ("inter 2s", "inter 300ms")):
            assert old in text, old
            text = text.replace(old, new)
        (tmp_path / "haproxy.cfg").write_text(text)
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(lb_port)
        farm = Farm(db, account_id, key, lb_port, procs, stats, config)
        deadline = time.monotonic() + 10
        while any(s["status"] != "UP" for s in farm.server_stats().values()):
            assert time.monotonic() < deadline, farm.server_stats()
            time.sleep(0.1)
        yield farm
    finally:
        if haproxy is not None:
            stop(haproxy)
        for p in procs:
            stop(p)
        db.dispose()
        sim.stop()


def ask(farm: Farm, i: int) -> int:
    """One request through HAProxy, alternating SDKs and streaming (each client closed)."""
    if i % 2:
        with farm.anthropic() as client, client.messages.stream(
                model="claude-test", max_tokens=32,
                messages=[{"role": "user", "content": f"hello {i}"}]) as stream:
            assert "".join(stream.text_stream)
        return 1
    with farm.openai() as client:
        if i % 4 == 0:
            with client.chat.completions.create(
                    model="gpt-test", stream=True, max_tokens=32,
                    messages=[{"role": "user", "content": f"hello {i}"}]) as chunks:
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return 1
        reply = client.chat.completions.create(
            model="gpt-test", max_tokens=32, messages=[{"role": "user", "content": f"hi {i}"}])
        assert reply.choices[0].message.content
    return 1


def wait_charged(farm: Farm, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while farm.usage_entries() < n:
        assert time.monotonic() < deadline, f"{farm.usage_entries()} of {n} charged"
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_haproxy_fails_over_and_the_books_balance(farm: Farm) -> None:
    # both proxies serve
    answered = sum(ask(farm, i) for i in range(12))
    stats = farm.server_stats()
    assert all(int(s["stot"]) > 0 for s in stats.values()), stats
    wait_charged(farm, answered)  # recorded before the kill (the writer flushes every 20 ms)

    # one proxy dies; HAProxy sends everything to the other (retrying refused connections
    # at once, before its checks mark the dead one down)
    farm.proxies[0].send_signal(signal.SIGKILL)
    farm.proxies[0].wait(10)
    answered += sum(ask(farm, i) for i in range(12, 30))
    deadline = time.monotonic() + 10
    while farm.server_stats()["proxy1"]["status"] != "DOWN":
        assert time.monotonic() < deadline, farm.server_stats()
        time.sleep(0.1)
    answered += sum(ask(farm, i) for i in range(30, 36))
    assert farm.server_stats()["proxy2"]["status"] == "UP"

    # graceful stop of the survivor flushes its records; then the books
    stop(farm.proxies[1])
    assert farm.proxies[1].returncode == 0
    # what the killed proxy held (its balance lease) is freed by the housekeeping sweep once
    # its heartbeat has been silent for wallet.instance_dead_after_seconds
    dead_after = farm.config.wallet["instance_dead_after_seconds"]
    with farm.db.transaction() as s:
        expired = instances.sweep_dead_instances(
            s, farm.config.audit_hmac_key(), dead_after_seconds=dead_after,
            now=utcnow() + timedelta(seconds=dead_after + 1))
    assert expired >= 1
    with farm.db.read_transaction() as s:
        bal = wallet.get_balance(s, farm.account_id)
        assert bal.balance == wallet.ledger_sum(s, farm.account_id)
        assert bal.held == 0
        usage = [(u.reference, u.amount) for u in s.scalars(select(LedgerEntry).where(
            LedgerEntry.account_id == farm.account_id, LedgerEntry.kind == "usage"))]
        recs = [(r.status, r.cost) for r in s.scalars(select(RequestRecord).where(
            RequestRecord.account_id == farm.account_id))]
    assert len(usage) == answered == 36  # each answered request charged exactly once
    assert len({ref for ref, _ in usage}) == answered
    assert [status for status, _ in recs] == [200] * answered
    cost = sum(c for _, c in recs)
    assert -sum(amount for _, amount in usage) == cost > 0
    assert bal.balance == 10_000_000 - cost

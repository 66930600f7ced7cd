"""``hushgate proxy`` as real processes (one mitmproxy master each), for the tests that kill,
revoke or scale: start from a config dict, wait until it serves, SIGKILL or SIGTERM it.

Also the small HTTP driver those tests share: one chat request from a thread, telling
whether its answer was delivered to the last byte (and its request id)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from control.core import accounts, keys, wallet
from control.core.audit import Actor
from control.core.context import Ctx

HUSHGATE = str(Path(sys.executable).with_name("hushgate"))
ACTOR = Actor("cli", "test-admin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProxyProcess:
    """``hushgate proxy [--workers N]`` with ``raw`` as its configuration file."""

    def __init__(self, raw: dict[str, Any], tmp_path: Path, name: str, *,
                 port: int | None = None, workers: int | None = None) -> None:
        self.port = port or free_port()
        cfg = json.loads(json.dumps(raw, default=str))
        cfg.setdefault("proxy", {})["listen_port"] = self.port
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("HUSHGATE_") or k == "HUSHGATE_VENV"}
        env["HUSHGATE_CONFIG"] = str(path)
        env["PYTHONUNBUFFERED"] = "1"
        self.out_path, self.err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        args = [HUSHGATE, "proxy"] + (["--workers", str(workers)] if workers else [])
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + 90
        while "running" not in self.out_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{name} did not start: {self.output()}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.out_path.read_text() + self.err_path.read_text()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush (a crash)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Graceful shutdown; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


@dataclass
class Answer:
    status: int
    request_id: str | None
    delivered: bool  # the whole answer reached the client, to its last byte


def chat(port: int, key: str, *, stream: bool = False, prompt: str = "hello",
         max_tokens: int = 20, timeout: float = 15) -> Answer:
    body = json.dumps({"model": "gpt-test", "stream": stream, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    status, rid = 0, None
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"content-type": "application/json",
                              "authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        status, rid = resp.status, resp.getheader("x-hushgate-request-id")
        data = resp.read()  # raises IncompleteRead if the proxy died mid-answer
        if status != 200:
            return Answer(status, rid, False)
        if stream:
            return Answer(status, rid, b"data: [DONE]" in data)
        json.loads(data)
        return Answer(status, rid, True)
    except (OSError, http.client.HTTPException, ValueError):
        return Answer(status, rid, False)
    finally:
        conn.close()


def new_account(config: Any, db: Any, balance: int, n: int) -> tuple[str, str]:
    """Another funded account with one key: (account id, key)."""
    with db.transaction() as session:
        ctx = Ctx(session, config, ACTOR)
        account = accounts.create_account(ctx, name=f"User {n}", email=f"u{n}@example.com",
                                          adult_attested=True)
        wallet.topup(ctx, account.id, balance, idempotency_key=f"seed-{n}")
        _, raw = keys.create_key(ctx, account.id)
        return account.id, raw

"""`hushgate up` and `hushgate serve` as a user runs them: real processes, real ports, the
official SDKs through the proxy, the control plane over HTTP, mail to a real SMTP server,
and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

HUSHGATE = str(Path(sys.executable).with_name("hushgate"))
ADMIN_PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A long-running `hushgate …` with its output read line by line on a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([HUSHGATE, *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out, True),
                             daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err, False),
                             daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, sink: list[str], announce: bool) -> None:
        for line in stream:
            sink.append(line)
            if announce:
                self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if text in self.lines.get(timeout=0.5):
                    return
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        raise AssertionError(f"{text!r} never printed; stdout={''.join(self.out)!r} "
                             f"stderr={''.join(self.err)!r}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        for reader in self.readers:  # the pipes end with the process
            reader.join(10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


@pytest.fixture
def machine(tmp_path, smtp_server):
    """A config for one machine on SQLite: free ports, the demo simulator, a real SMTP server."""
    inbox, smtp_port = smtp_server
    ports = {"proxy": free_port(), "control": free_port(), "sim": free_port()}
    sim = f"http://127.0.0.1:{ports['sim']}"
    cfg = tmp_path / "hushgate.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "auth": {"bcrypt_cost": 4},
        "proxy": {"listen_port": ports["proxy"]},
        "control": {"listen_port": ports["control"]},
        "providers": [
            {"name": "simulator", "base_url": sim, "api_format": "openai",
             "key_env": "HUSHGATE_SIMULATOR_KEY"},
            {"name": "simulator-anthropic", "base_url": sim, "api_format": "anthropic",
             "key_env": "HUSHGATE_SIMULATOR_KEY"},
        ],
        "smtp": {"host": "127.0.0.1", "port": smtp_port},
    }))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HUSHGATE_") or k == "HUSHGATE_VENV"}
    env.update(HUSHGATE_CONFIG=str(cfg), HUSHGATE_ADMIN_PASSWORD=ADMIN_PASSWORD,
               HUSHGATE_ACTOR="tester")

    def run(*args: str) -> str:
        done = subprocess.run([HUSHGATE, *args], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return {"ports": ports, "env": env, "run": run, "inbox": inbox, "data": tmp_path / "data"}


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode()


def test_up_runs_proxy_control_plane_and_housekeeping(machine):
    run, ports = machine["run"], machine["ports"]
    run("init")
    account = json.loads(run("accounts", "create", "--name", "Ada", "--email",
                             "ada@example.com", "--adult", "--json"))
    raw_key = json.loads(run("keys", "create", account["id"], "--json"))["key"]
    run("wallet", "topup", account["id"], "5", "--idempotency-key", "first")

    up = Process(["up"], machine["env"])
    try:
        up.wait_for("running; press Ctrl-C to stop")
        proxy = f"http://127.0.0.1:{ports['proxy']}"
        # the official SDKs through the proxy, to the demo simulator
        chat = openai.OpenAI(base_url=f"{proxy}/v1", api_key=raw_key, max_retries=0)
        reply = chat.chat.completions.create(
            model="sim-gpt", messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content and reply.usage.total_tokens > 0
        stream = chat.chat.completions.create(
            model="sim-gpt", stream=True, messages=[{"role": "user", "content": "hi"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        claude = anthropic.Anthropic(base_url=proxy, api_key=raw_key, max_retries=0)
        msg = claude.messages.create(model="sim-claude", max_tokens=64,
                                     messages=[{"role": "user", "content": "hello"}])
        assert msg.content[0].text and msg.usage.output_tokens > 0
        # the control plane beside it
        control = f"http://127.0.0.1:{ports['control']}"
        assert _get(f"{control}/healthz") == (200, "ok\n")
        status, login = _get(f"{control}/admin/login")
        assert status == 200 and "password" in login.lower()
        status, policy = _get(f"{control}/policy")
        assert status == 200 and "90 days" in policy
        # housekeeping: the queued key-created notice is delivered over SMTP
        deadline = time.monotonic() + 30
        while not machine["inbox"].to("ada@example.com"):
            assert time.monotonic() < deadline, "no mail arrived"
            time.sleep(0.2)
    finally:
        code = up.terminate()
    out, err = "".join(up.out), "".join(up.err)
    assert code == 0, err
    (mail,) = machine["inbox"].to("ada@example.com")
    assert mail["Subject"] == "A new API key was created"
    for name in ("simulator", "proxy", "control plane", "housekeeping"):
        assert f"{name}: stopped" in out
    # nothing secret in what the process printed or mailed
    assert raw_key not in out + err
    assert all(raw_key.encode() not in m for m in machine["inbox"].raw)
    # the three requests were charged and recorded (the writer flushed on stop)
    history = json.loads(run("wallet", "history", account["id"], "--json"))
    assert sum(1 for e in history if e["kind"] == "usage") == 3
    events = json.loads(run("audit", "list", "--json", "--limit", "200"))
    actions = {e["action"] for e in events}
    assert {"policy.changed", "retention.purged"} <= actions, actions
    run("audit", "verify")


def test_serve_runs_the_control_plane_until_sigterm(machine):
    run, ports = machine["run"], machine["ports"]
    run("init")
    serve = Process(["serve", "--no-housekeeping"], machine["env"])
    try:
        serve.wait_for("running; press Ctrl-C to stop")
        assert _get(f"http://127.0.0.1:{ports['control']}/healthz")[0] == 200
        assert "housekeeping" not in "".join(serve.out)
    finally:
        code = serve.terminate()
    assert code == 0 and "control plane: stopped" in "".join(serve.out)


def test_up_refuses_a_non_loopback_control_plane_without_tls(machine, tmp_path):
    cfg = Path(machine["env"]["HUSHGATE_CONFIG"])
    raw = yaml.safe_load(cfg.read_text())
    raw["control"]["listen_host"] = "0.0.0.0"  # noqa: S104 - the point of the test
    cfg.write_text(yaml.safe_dump(raw))
    done = subprocess.run([HUSHGATE, "up"], env=machine["env"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert "control.listen_host" in done.stderr
    # services started before the refusal were stopped again
    assert "proxy: stopped" in done.stdout


def test_first_up_creates_an_admin_who_can_sign_in(machine):
    """No `init`, no password in the environment: `up` migrates, creates `admin` with a
    random password in a 0600 file (the password itself is never printed)."""
    import http.cookiejar
    import re
    import stat
    import urllib.parse

    env = {k: v for k, v in machine["env"].items() if k != "HUSHGATE_ADMIN_PASSWORD"}
    up = Process(["up"], env)
    try:
        up.wait_for("running; press Ctrl-C to stop")
        secret = machine["data"] / "initial-admin-password"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        password = secret.read_text().strip()
        assert str(secret) in "".join(up.out) and password not in "".join(up.out + up.err)
        control = f"http://127.0.0.1:{machine['ports']['control']}"
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        form = opener.open(f"{control}/admin/login", timeout=10).read().decode()
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        body = urllib.parse.urlencode({"csrf_token": token, "username": "admin",
                                       "password": password, "next": ""}).encode()
        with opener.open(f"{control}/admin/login", data=body, timeout=10) as resp:
            assert resp.status == 200 and "/admin/login" not in resp.url
            assert "Sign out" in resp.read().decode()
    finally:
        assert up.terminate() == 0

"""The canary test: unique markers in prompts, completions (plain and streamed), provider
error text, the hushgate key and the provider key; every path driven through a real
``hushgate proxy`` process; the markers must appear nowhere hushgate writes: its stdout and
stderr, every file under the data and temp folders, the SQLite file (+WAL), a PostgreSQL
dump."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import openai
import pytest
import yaml
from proxy_helpers import (
    FAULT_CUT,
    FAULT_HANG,
    FAULT_SERVER_ERROR,
    PROVIDER_KEY_ENV,
    catalog,
    make_config,
    post,
    raw_request,
    setup_account,
)

from control.core.db import Database

HUSHGATE = str(Path(sys.executable).with_name("hushgate"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_dump(url: str) -> bytes:
    for exe in ("/usr/bin/pg_dump", "/usr/lib/postgresql/15/bin/pg_dump"):
        if os.path.exists(exe):
            return subprocess.run([exe, "--no-owner", url], check=True, capture_output=True,
                                  timeout=60).stdout
    pytest.fail("pg_dump not found")


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("hushgate proxy exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("hushgate proxy did not listen")


def test_markers_appear_nowhere(tmp_path, db_url, backend, sim):
    tag = uuid.uuid4().hex[:12]
    m_prompt, m_reply, m_stream = f"CANARYPROMPT{tag}", f"CANARYREPLY{tag}", f"CANARYSSE{tag}"
    m_error, m_provider = f"CANARYERR{tag}", f"sk-CANARYPROV{tag}"
    data_dir, tmp_dir = tmp_path / "data", tmp_path / "tmp"
    tmp_dir.mkdir()
    dead = _free_port()
    cat = catalog(sim.base_url)
    cat["providers"].append({"name": "dead", "base_url": f"http://127.0.0.1:{dead}",
                             "api_format": "openai", "key_env": PROVIDER_KEY_ENV})
    cat["models"].append({"name": "dead-model", "provider": "dead",
                          "prices": {"input": 1, "output": 1}})
    port = _free_port()
    settings = {"data_dir": str(data_dir), "database": {"url": db_url},
                "auth": {"bcrypt_cost": 4},
                "proxy": {"listen_port": port, "upstream_timeout_ms": 1000,
                          "stream_idle_timeout_ms": 400, "record_flush_ms": 20,
                          "records_jsonl": str(data_dir / "records.jsonl")},
                **cat}
    cfg_file = tmp_path / "hushgate.yaml"
    cfg_file.write_text(yaml.safe_dump(settings))
    config = make_config(tmp_path, db_url, **{k: v for k, v in settings.items()
                                              if k not in ("data_dir", "database")})
    db = Database.from_config(config)
    _, _, key = setup_account(config, db, 10_000_000)
    db.dispose()
    markers = [m_prompt, m_reply, m_stream, m_error, m_provider, key]

    env = {**os.environ, "HUSHGATE_CONFIG": str(cfg_file), PROVIDER_KEY_ENV: m_provider,
           "TMPDIR": str(tmp_dir), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([HUSHGATE, "proxy"], env=env, stdout=out, stderr=err)
        try:
            _wait_port(port, proc)
            _drive_every_path(port, key, m_prompt, m_reply, m_stream, m_error)
            _drive_gateway_paths(port, key, m_prompt, m_stream, sim)
            assert any(m_provider in json.dumps(_headers(r)) for r in sim.requests), \
                "the provider key should have reached the simulator"
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0

    haystacks: dict[str, bytes] = {"stdout": out_path.read_bytes(),
                                   "stderr": err_path.read_bytes()}
    for root in (data_dir, tmp_dir):
        for path in root.rglob("*"):
            if path.is_file():
                haystacks[str(path)] = path.read_bytes()
    assert (data_dir / "records.jsonl").exists()
    if backend == "postgresql":
        haystacks["pg_dump"] = _pg_dump(db_url)
    else:
        assert any(name.endswith("hushgate.db") for name in haystacks)
    for name, content in haystacks.items():
        for marker in markers:
            assert marker.encode() not in content, f"{marker[:14]}... leaked into {name}"
    records = [json.loads(line) for line in (data_dir / "records.jsonl").read_text().splitlines()]
    assert len(records) >= 18, (len(records), err_path.read_text()[-3000:])


def _drive_gateway_paths(port, key, m_prompt, m_stream, sim):
    """The Gateway's own error and stream paths: terminal events, deadlines, 502s for bad
    JSON bodies, query parameters, Connection: close."""
    import anthropic

    base = f"http://127.0.0.1:{port}"
    content = f"{m_prompt} SIM_REPLY:{m_stream}"
    with openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0) as client:
        for fault in (FAULT_CUT, "garbage"):  # non-streamed body cut / not JSON -> 502
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(model="gpt-test", messages=[
                    {"role": "user", "content": f"{content} SIM_FAULT:{fault}"}])
            assert m_stream not in json.dumps(info.value.body)
        sim.slow_chunk_delay_ms = 2000  # a stalled stream -> its idle deadline
        try:
            with pytest.raises(openai.APIError):  # noqa: PT012
                for _ in client.chat.completions.create(model="gpt-test", stream=True, messages=[
                        {"role": "user", "content": f"{content} SIM_FAULT:slow_stream"}]):
                    pass
        finally:
            sim.slow_chunk_delay_ms = 200
    with anthropic.Anthropic(base_url=base, api_key=key, max_retries=0) as client, \
            pytest.raises(anthropic.APIStatusError), \
            client.messages.stream(model="claude-test", max_tokens=50, messages=[
                {"role": "user", "content": f"{content} SIM_FAULT:{FAULT_CUT}"}]) as stream:
        for _ in stream:
            pass
    auth = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    body = json.dumps({"model": "gpt-test", "stream": True,
                       "messages": [{"role": "user", "content": m_prompt}]}).encode()
    post(port, f"/v1/chat/completions?{m_prompt}=1", body, auth)  # unknown parameter
    post(port, f"/chat/completions?x={m_prompt}", body, auth)  # wrong base URL
    post(port, "/v1/chat/completions", body, {**auth, "connection": "close"})


def _headers(req):
    h = req.get("headers") if isinstance(req, dict) else getattr(req, "headers", {})
    return dict(h or {})


def _drive_every_path(port, key, m_prompt, m_reply, m_stream, m_error):
    base = f"http://127.0.0.1:{port}"
    msgs = [{"role": "user", "content": f"{m_prompt} SIM_REPLY:{m_reply}"}]
    with openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0) as client:
        # success, plain and streamed
        resp = client.chat.completions.create(model="gpt-test", messages=msgs)
        assert m_reply in resp.choices[0].message.content
        streamed = "".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="gpt-test", stream=True,
                messages=[{"role": "user", "content": f"{m_prompt} SIM_REPLY:{m_stream}"}])
            if c.choices)
        assert m_stream in streamed
        # provider 4xx / 5xx with planted error text
        for fault in ("bad_request", FAULT_SERVER_ERROR):
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(model="gpt-test", messages=[{
                    "role": "user",
                    "content": f"{m_prompt} SIM_FAULT:{fault} SIM_ERROR_TEXT:{m_error}"}])
            assert m_error not in str(info.value.body)
        # upstream cut mid-stream
        with pytest.raises(openai.APIError):  # noqa: PT012
            for _ in client.chat.completions.create(
                    model="gpt-test", stream=True, messages=[{
                        "role": "user",
                        "content": f"{m_prompt} SIM_REPLY:{m_stream} SIM_FAULT:{FAULT_CUT}"}]):
                pass
        # connection refused
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="dead-model", messages=msgs)
    # upstream timeout
    status, _ = post(port, "/v1/chat/completions", json.dumps({
        "model": "gpt-test", "messages": [{"role": "user", "content":
                                           f"{m_prompt} SIM_FAULT:{FAULT_HANG}"}]}).encode(),
        {"content-type": "application/json", "authorization": f"Bearer {key}"})
    assert status in (0, 502, 504)
    # client disconnect mid-stream
    body = json.dumps({"model": "gpt-test", "stream": True, "messages": [
        {"role": "user", "content": f"{m_prompt} SIM_REPLY:{m_stream * 50}"}]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nAuthorization: Bearer " + key.encode()
                  + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        s.recv(10)
    # malformed input carrying markers
    auth = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    post(port, "/v1/chat/completions", f'{{"model": "{m_prompt}'.encode(), auth)
    post(port, "/v1/chat/completions", json.dumps({"model": m_prompt}).encode(), auth)
    post(port, f"/v1/chat/completions?api_key={key}&x={m_prompt}", b"{}", auth)
    post(port, "/v1/chat/completions", b'{"x": "\xff' + m_prompt.encode() + b'"}', auth)
    post(port, "/v1/chat/completions", b"{}",
         {"content-type": "application/json", "authorization": f"Bearer {key}{m_prompt}"})
    raw_request(port, b"POST /v1/" + m_prompt.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"X-Bad: " + key.encode() + b"\rEvil: " + m_prompt.encode() + b"\r\n"
                b"Content-Length: 2\r\n\r\n{}")
    raw_request(port, b"GARBAGE " + m_prompt.encode() + b"\r\n\r\n")

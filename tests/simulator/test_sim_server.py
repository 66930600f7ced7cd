"""The server itself: keep-alive, malformed input, routing errors, lifecycle (thread,
caller's loop, CLI), recording under concurrency, latency."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from control.simulator import Simulator

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_keep_alive_reuses_one_connection(sim):
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
    try:
        socks = set()
        for path, body in [("/v1/chat/completions", {**CHAT, "stream": True}),
                           ("/v1/chat/completions", CHAT), ("/v1/models", None),
                           ("/v1/nope", CHAT)]:
            conn.request("GET" if body is None else "POST", path,
                         body=None if body is None else json.dumps(body),
                         headers={"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status in (200, 404)
            socks.add(id(conn.sock))
        assert len(socks) == 1
    finally:
        conn.close()
    assert len(sim.requests) == 4


def test_stream_is_chunked_sse(sim):
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as s:
        body = json.dumps({**CHAT, "stream": True}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"text/event-stream" in head
    assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


def test_malformed_http_gets_400_and_close(sim):
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as s:
        s.sendall(b"GARBAGE\x00 not http\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


def test_routing_and_body_errors(sim, raw_http):
    status, _, body = raw_http(sim, "POST", "/v1/nope", CHAT)
    assert status == 404 and body["error"]["type"] == "invalid_request_error"
    status, _, body = raw_http(sim, "POST", "/v1/messages/nope", CHAT)
    assert status == 404 and body["type"] == "error"
    status, _, body = raw_http(sim, "GET", "/v1/chat/completions")
    assert status == 405
    status, _, body = raw_http(sim, "POST", "/v1/chat/completions", b"{oops")
    assert status == 400 and "could not parse the JSON body" in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    status, _, body = raw_http(sim, "POST", "/v1/chat/completions", {"model": "m"})
    assert status == 400 and body["error"]["param"] == "messages"
    status, _, body = raw_http(sim, "GET", "/health")
    assert (status, body) == (200, {"status": "ok"})
    status, headers, body = raw_http(sim, "GET", "/v1/models",
                                     headers={"anthropic-version": "2023-06-01"})
    assert status == 200 and body["data"][0]["type"] == "model" and "has_more" in body
    assert headers["request-id"].startswith("req_")
    paths = [(r.path, r.query) for r in sim.requests]
    assert ("/v1/nope", "") in paths


def test_request_recording(sim, raw_http):
    raw_http(sim, "POST", "/v1/chat/completions?x=1", CHAT,
             {"authorization": "Bearer sk-prov", "x-api-key": "sk-ant", "x-dup": "a"})
    req = sim.requests[-1]
    assert (req.method, req.path, req.query) == ("POST", "/v1/chat/completions", "x=1")
    assert req.headers["authorization"] == "Bearer sk-prov"
    assert req.header("X-API-KEY") == "sk-ant" and req.api_key == "sk-ant"
    assert req.body == CHAT and req.json() == CHAT and json.loads(req.raw_body) == CHAT
    sim.reset()
    assert sim.requests == []


def test_only_loopback():
    with pytest.raises(ValueError, match="loopback"):
        Simulator(host="0.0.0.0")
    assert Simulator(host="localhost").base_url == "http://localhost:0"


def test_stop_ends_hung_connections_and_frees_the_port():
    target = Simulator().start()
    port = target.port
    assert target.base_url == f"http://127.0.0.1:{port}" and port > 0
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "SIM_FAULT:hang"}]})
    conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    target.wait_for_requests(1)
    started = time.monotonic()
    target.stop()
    target.stop()  # idempotent
    assert time.monotonic() - started < 3
    assert conn.recv(10) == b""  # closed without an answer
    conn.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    again = Simulator(port=port).start()  # the port can be bound again
    again.stop()


def test_serve_in_the_callers_loop(async_openai_for):
    target = Simulator()

    async def run():
        task = asyncio.create_task(target.serve())
        while not target.port:
            await asyncio.sleep(0.01)
        async with async_openai_for(target) as client:
            resp = await client.chat.completions.create(**CHAT)
        target.stop()
        await task
        return resp

    assert asyncio.run(run()).usage.prompt_tokens == 1


def test_concurrent_requests_are_all_recorded(sim, raw_http):
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: raw_http(sim, "POST", "/v1/chat/completions",
                                                    CHAT)[0], range(40)))
    assert statuses == [200] * 40
    assert len(sim.requests) == 40


def test_latency_and_wait_for_requests(make_sim, raw_http):
    target = make_sim(latency_ms=150)
    threading.Timer(0.05, lambda: raw_http(target, "GET", "/v1/models")).start()
    assert len(target.wait_for_requests(1, timeout=5)) == 1
    started = time.monotonic()
    assert raw_http(target, "GET", "/v1/models")[0] == 200
    assert time.monotonic() - started >= 0.15


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_module():
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "control.simulator", "--port", str(port),
                             "--log-level", "WARNING"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                resp = conn.getresponse()
                assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}
                conn.close()
                break
            except ConnectionRefusedError:
                conn.close()
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        # SIGTERM, not SIGINT: a test run started with SIGINT ignored (``trap '' INT``)
        # passes that on to its children. Never leave the process behind.
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err.decode()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_module_stops_on_signal_even_with_sigint_ignored(sig):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "control.simulator", "--port", str(port),
                             "--log-level", "WARNING"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except ConnectionRefusedError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    help_text = subprocess.run([sys.executable, "-m", "control.simulator", "--help"],
                               env=env, cwd=ROOT, capture_output=True, check=True).stdout
    assert b"--port" in help_text

"""HTTP and wire-format conformance through the real proxy (issue #9, defects 1-10).

Each test names the defect it pins; each failed on the code before the Gateway.
"""

from __future__ import annotations

import json
import socket
import ssl

import anthropic
import openai
import pytest
from proxy_helpers import FAULT_CUT, make_config, post

from control.core.errors import ConfigError
from proxy_addons.runner import ProxyServer, mitmproxy_options

BALANCE = 10_000_000
JSON = "application/json"


def chat(prompt: str = "hello", *, stream: bool = False, **extra) -> bytes:
    return json.dumps({"model": "gpt-test", "stream": stream, "max_tokens": 50,
                       "messages": [{"role": "user", "content": prompt}], **extra}).encode()


def auth(key: str) -> dict[str, str]:
    return {"content-type": JSON, "authorization": f"Bearer {key}"}


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a timeout means it kept the socket."""
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk


# -- 1: Connection: close is honoured (RFC 9112 §9.6) --------------------------------------

@pytest.mark.parametrize("kind", ["forwarded", "refused", "models"])
def test_connection_close_is_honoured(gateway, kind):
    body = chat().decode() if kind != "models" else ""
    key = gateway.key if kind != "refused" else "hg_wrong"
    method, path = ("GET", "/v1/models") if kind == "models" else ("POST",
                                                                    "/v1/chat/completions")
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=3) as s:
        s.sendall(head.encode())
        answer = _read_until_closed(s)  # raises TimeoutError if the proxy keeps it open
    assert answer.startswith(b"HTTP/1.1 ")
    assert b"connection: close" in answer.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    gateway.drain()


# -- 2: a provider-cut stream ends with a terminal event, then a proper end of body --------

def test_cut_stream_ends_with_openai_error_event(gateway):
    with gateway.openai() as client, pytest.raises(openai.APIError) as info:
        stream = client.chat.completions.create(
            model="gpt-test", max_tokens=50, stream=True,
            messages=[{"role": "user", "content": f"SIM_FAULT:{FAULT_CUT} tell me a story"}])
        for _ in stream:
            pass
    assert not isinstance(info.value, openai.APIConnectionError)
    assert info.value.body["code"] == "upstream_cut"
    rec = gateway.last_record()
    assert (rec["status"], rec["error_type"], rec["stream"]) == (502, "upstream_cut", True)
    assert rec["cost"] > 0 and rec["estimated"]  # charged for what was delivered
    gateway.assert_books_balance()


def test_cut_stream_ends_with_anthropic_error_event(gateway):
    prompt = f"SIM_FAULT:{FAULT_CUT} tell me a story"
    with gateway.anthropic() as client, pytest.raises(anthropic.APIStatusError) as info, \
            client.messages.stream(model="claude-test", max_tokens=50,
                                   messages=[{"role": "user", "content": prompt}]) as stream:
        for _ in stream:
            pass
    assert info.value.body["error"]["type"] == "api_error"
    rec = gateway.last_record()
    assert (rec["status"], rec["error_type"]) == (502, "upstream_cut")
    gateway.assert_books_balance()


def test_cut_stream_raw_has_terminal_chunk(gateway):
    body = chat(f"SIM_FAULT:{FAULT_CUT} tell me a story", stream=True).decode()
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {gateway.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(head.encode())
        answer = _read_until_closed(s)
    assert answer.endswith(b"\r\n0\r\n\r\n")  # the end of the chunked body
    assert b'"code":"upstream_cut"' in answer
    gateway.drain()


# -- 3: hushgate errors on mitmproxy's path in the endpoint's format ------------------------
# (tests/proxy/test_errorpage.py: 502 unreachable, 504 timeout, 413 chunked body)

# -- 4: a stalled stream gets its own idle deadline, recorded as upstream_timeout -----------

def test_stalled_stream_is_upstream_timeout(make_gateway):
    gw = make_gateway(proxy={"stream_idle_timeout_ms": 300, "upstream_timeout_ms": 5000})
    gw.sim.slow_chunk_delay_ms = 4000
    with gw.openai(timeout=30) as client, pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(
                model="gpt-test", max_tokens=50, stream=True,
                messages=[{"role": "user", "content": "SIM_FAULT:slow_stream hi"}]):
            pass
    assert not isinstance(info.value, openai.APIConnectionError)
    assert info.value.body["code"] == "upstream_timeout"
    rec = gw.last_record()
    assert (rec["status"], rec["error_type"]) == (504, "upstream_timeout")
    gw.assert_books_balance()


# -- 5 / 6: a cut or non-JSON non-streamed body is a 502 in the endpoint's format, free -----

@pytest.mark.parametrize("fault", ["cut", "garbage"])
def test_bad_json_body_is_502_and_free(gateway, fault):
    with gateway.openai() as client, pytest.raises(openai.APIStatusError) as oai:
        client.chat.completions.create(
            model="gpt-test", max_tokens=50,
            messages=[{"role": "user", "content": f"SIM_FAULT:{fault} a long story please"}])
    assert oai.value.status_code == 502
    assert oai.value.body["code"] in ("upstream_cut", "invalid_upstream_response")
    with gateway.anthropic() as client, pytest.raises(anthropic.APIStatusError) as ant:
        client.messages.create(
            model="claude-test", max_tokens=50,
            messages=[{"role": "user", "content": f"SIM_FAULT:{fault} a long story please"}])
    assert ant.value.status_code == 502 and ant.value.body["type"] == "error"
    for rec in gateway.records():
        assert rec["status"] == 502 and rec["cost"] == 0
    assert gateway.assert_books_balance().balance == BALANCE


# -- 7: refused streaming requests are recorded with stream=true ----------------------------

@pytest.mark.parametrize("refusal", ["bad_key", "unknown_model", "no_funds", "bad_param"])
def test_refused_stream_recorded_as_stream(make_gateway, refusal):
    gw = make_gateway(balance=1 if refusal == "no_funds" else BALANCE)
    body = chat(stream=True) if refusal != "unknown_model" else json.dumps(
        {"model": "nope", "stream": True, "messages": []}).encode()
    path = "/v1/chat/completions" + ("?foo=1" if refusal == "bad_param" else "")
    status, _ = post(gw.port, path, body, auth("hg_x" if refusal == "bad_key" else gw.key))
    assert status >= 400
    rec = gw.last_record()
    assert rec["stream"] is True and rec["status"] == status


# -- 8: query parameters are allowed per endpoint; others refused, naming the parameter -----

def test_unknown_query_parameter_is_refused(gateway):
    status, answer = post(gateway.port, "/v1/chat/completions?temperature_override=3",
                          chat(), auth(gateway.key))
    assert status == 400
    assert answer["error"]["code"] == "unknown_parameter"
    assert answer["error"]["param"] == "temperature_override"
    assert "temperature_override" in answer["error"]["message"]
    assert gateway.sim.requests == []


def test_allowed_query_parameter_is_forwarded(gateway):
    body = json.dumps({"model": "claude-test", "max_tokens": 20,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, _ = post(gateway.port, "/v1/messages?beta=true", body,
                     {"content-type": JSON, "x-api-key": gateway.key})
    assert status == 200
    assert gateway.sim.requests[-1].query == "beta=true"
    status, answer = post(gateway.port, "/v1/messages?beta=true&x=1", body,
                          {"content-type": JSON, "x-api-key": gateway.key})
    assert status == 400 and "'x'" in answer["error"]["message"]


# -- 9: refuse to start with a TLS key-log file -------------------------------------------

@pytest.mark.parametrize("name", ["MITMPROXY_SSLKEYLOGFILE", "SSLKEYLOGFILE"])
def test_refuses_to_start_with_key_log_file(tmp_path, monkeypatch, name):
    monkeypatch.setenv(name, str(tmp_path / "keys.log"))
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ConfigError) as info:
        ProxyServer(config, listen_port=0)
    assert name in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "keys.log").exists()
    with pytest.raises(ConfigError):
        mitmproxy_options(config)


# -- 10: no TLS on a listener without a configured certificate -----------------------------

def test_plain_listener_refuses_tls(gateway):
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw, \
            pytest.raises((ssl.SSLError, ConnectionError, OSError)), \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.getpeercert(binary_form=True)
    assert gateway.sim.requests == []

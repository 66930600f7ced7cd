"""Errors mitmproxy answers by itself reach clients as hushgate JSON, never as mitmproxy's
HTML page: an unreachable provider, a provider that times out, a chunked body over the size
limit, a request line that doesn't parse. The official SDKs get a proper APIStatusError with
hushgate's message; every request is recorded once, holds are released, nothing is charged."""

from __future__ import annotations

import json
import socket

import anthropic
import openai
import pytest
from proxy_helpers import FAULT_HANG, raw_request

from proxy_addons import errorpage
from proxy_addons.wire import PROXY_ERRORS, error_body

BALANCE = 10_000_000
CANARY = "CANARY-7f3c1e"


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_hushgate_json(response, status: int, code: str, api_format: str) -> dict:
    """The raw answer: hushgate's JSON error in the endpoint's own wire format, no trace of
    mitmproxy."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert "server" not in response.headers
    assert "mitmproxy" not in response.text.lower()
    body = response.json()
    assert body == error_body(api_format, status, code, PROXY_ERRORS[code][1])
    return body


def _call_both_sdks(gw, prompt: str, **client_kw) -> tuple[openai.APIStatusError,
                                                            anthropic.APIStatusError]:
    with gw.openai(**client_kw) as client, pytest.raises(openai.APIStatusError) as oai:
        client.chat.completions.create(model="gpt-test", max_tokens=20,
                                       messages=[{"role": "user", "content": prompt}])
    with gw.anthropic(**client_kw) as client, pytest.raises(anthropic.APIStatusError) as ant:
        client.messages.create(model="claude-test", max_tokens=20,
                               messages=[{"role": "user", "content": prompt}])
    return oai.value, ant.value


def _assert_records(gw, n: int, status: int, code: str) -> None:
    recs = gw.records()
    assert len(recs) == n  # exactly one record per request
    for rec in recs:
        assert (rec["status"], rec["error_type"], rec["cost"]) == (status, code, 0)
        assert rec["key_id"] == gw.key_id
    bal = gw.assert_books_balance()  # no open hold, ledger == balance
    assert bal.balance == BALANCE


def test_sdks_get_json_502_when_provider_unreachable(make_gateway):
    gw = make_gateway(base_url=f"http://127.0.0.1:{_dead_port()}")
    oai, ant = _call_both_sdks(gw, "hello")
    _assert_hushgate_json(oai.response, 502, "upstream_unreachable", "openai")
    _assert_hushgate_json(ant.response, 502, "upstream_unreachable", "anthropic")
    for exc in (oai, ant):
        assert exc.response.headers["x-hushgate-request-id"]
    assert isinstance(oai, openai.InternalServerError)
    assert (oai.code, oai.type) == ("upstream_unreachable", "server_error")
    assert oai.message.startswith("Error code: 502")
    assert isinstance(ant, anthropic.InternalServerError)
    assert ant.api_message == PROXY_ERRORS["upstream_unreachable"][1]
    assert ant.type == "api_error"
    _assert_records(gw, 2, 502, "upstream_unreachable")


def test_sdks_get_json_504_when_provider_times_out(make_gateway):
    gw = make_gateway(proxy={"upstream_timeout_ms": 500})
    oai, ant = _call_both_sdks(gw, f"SIM_FAULT:{FAULT_HANG}", timeout=30)
    _assert_hushgate_json(oai.response, 504, "upstream_timeout", "openai")
    _assert_hushgate_json(ant.response, 504, "upstream_timeout", "anthropic")
    assert (oai.status_code, oai.code, oai.type) == (504, "upstream_timeout", "server_error")
    assert isinstance(ant, anthropic.InternalServerError) and ant.status_code == 504
    assert (ant.type, ant.api_message) == ("api_error", "the provider did not answer in time")
    with gw.openai(timeout=30) as client, pytest.raises(openai.APIStatusError) as streamed:
        client.chat.completions.create(model="gpt-test", max_tokens=20, stream=True,
                                       messages=[{"role": "user",
                                                  "content": f"SIM_FAULT:{FAULT_HANG}"}])
    _assert_hushgate_json(streamed.value.response, 504, "upstream_timeout", "openai")
    assert len(gw.sim.requests) == 3  # each was forwarded, then given up on
    _assert_records(gw, 3, 504, "upstream_timeout")


def _head(key: str, extra: str = "") -> bytes:
    return ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\n{extra}\r\n").encode()


def test_chunked_body_over_limit_is_json_413(make_gateway):
    gw = make_gateway(proxy={"max_request_bytes": 2048})
    body = json.dumps({"model": "gpt-test", "pad": CANARY * 400}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                      for i in range(0, len(body), 1000))
    status, data = raw_request(gw.port, _head(gw.key, "Transfer-Encoding: chunked\r\n")
                               + chunks)
    assert status == 413
    # In the endpoint's (OpenAI) format, like every hushgate error on this endpoint.
    assert json.loads(data) == {"error": {
        "type": "invalid_request_error", "code": "request_too_large", "param": None,
        "message": "the request body is too large"}}
    assert gw.sim.requests == []
    recs = gw.records()
    assert len(recs) == 1
    assert (recs[0]["status"], recs[0]["error_type"], recs[0]["cost"]) == (
        413, "request_too_large", 0)
    assert gw.assert_books_balance().balance == BALANCE


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("request_head", [
    f"GET /{CANARY} HTTP/1.1 trailing-{CANARY}\r\nHost: x\r\n\r\n".encode(),
    f"\x01\x02{CANARY}\xff\r\n\r\n".encode("latin-1"),
    f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {CANARY}\r\n\r\n"
    .encode(),
], ids=["bad_request_line", "binary", "bad_content_length"])
def test_malformed_request_is_json_400_without_echo(gateway, request_head):
    answer = _raw(gateway.port, request_head)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    assert b"server:" not in head.lower()
    assert CANARY.encode() not in answer and b"mitmproxy" not in answer.lower()
    assert json.loads(body)["error"]["code"] == "invalid_request"
    assert gateway.sim.requests == []
    recs = [(r["status"], r["error_type"], r["cost"]) for r in gateway.records()]
    # A head that doesn't parse is no request (mitmproxy makes no flow): nothing to record.
    # A parsed head with an invalid body length is a request: recorded once.
    assert recs == ([(400, "invalid_request", 0)] if b"Content-Length" in request_head
                    else [])
    assert gateway.assert_books_balance().balance == BALANCE


def test_error_answer_never_uses_mitmproxys_message():
    errorpage.install()
    errorpage.install()  # idempotent
    assert errorpage.installed()
    raw = errorpage.error_response_bytes(502, f"unexpected server response: b'{CANARY}'")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 ")
    assert CANARY.encode() not in raw and b"mitmproxy" not in raw.lower()
    assert json.loads(body)["error"]["code"] == "upstream_unreachable"
    assert int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
               [b"content-length"]) == len(body)

"""Bad input over raw HTTP: every case is refused by hushgate in the endpoint's format,
recorded once, costs nothing, and contacts no provider."""

from __future__ import annotations

import json

import pytest
from proxy_helpers import post, raw_request

JSON = "application/json"


def chat(model: str = "gpt-test") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]}).encode()


CASES = [
    # (name, path, body, headers (key added unless "noauth"), status, error code)
    ("bad_json", "/v1/chat/completions", b'{"model": ', {"content-type": JSON}, 400,
     "invalid_json"),
    ("missing_model", "/v1/chat/completions", b'{"messages": []}', {"content-type": JSON}, 400,
     "missing_model"),
    ("wrong_content_type", "/v1/chat/completions", chat(), {"content-type": "text/plain"}, 400,
     "invalid_content_type"),
    ("invalid_encoding", "/v1/chat/completions", b'{"model": "gpt-test", "x": "\xff\xfe"}',
     {"content-type": JSON}, 400, "invalid_encoding"),
    ("unknown_model", "/v1/chat/completions", chat("nope"), {"content-type": JSON}, 404,
     "model_not_found"),
    ("wrong_format_model", "/v1/messages", chat(), {"content-type": JSON}, 404,
     "model_not_found"),
    ("unknown_path", "/v1/secret", chat(), {"content-type": JSON}, 404, "unknown_endpoint"),
    ("key_in_query", "/v1/chat/completions?api_key=hg_abc", chat(), {"content-type": JSON},
     400, "key_in_query"),
    ("no_key", "/v1/chat/completions", chat(), {"content-type": JSON, "noauth": "1"}, 401,
     "missing_api_key"),
    ("long_key", "/v1/chat/completions", chat(),
     {"content-type": JSON, "authorization": "Bearer hg_" + "a" * 90}, 401, "invalid_api_key"),
    ("wrong_key", "/v1/chat/completions", chat(),
     {"content-type": JSON, "authorization": "Bearer hg_000000000000_" + "0" * 38}, 401,
     "invalid_api_key"),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status", "code"), CASES,
                         ids=[c[0] for c in CASES])
def test_refused(gateway, name, path, body, headers, status, code):
    headers = dict(headers)
    if "noauth" in headers:
        headers.pop("noauth")
    elif "authorization" not in headers:
        headers["authorization"] = f"Bearer {gateway.key}"
    got, answer = post(gateway.port, path, body, headers)
    assert got == status
    if path.startswith("/v1/messages"):
        assert answer["type"] == "error"  # Anthropic-format error
    else:
        assert answer["error"]["code"] == code  # OpenAI-format error
    assert gateway.sim.requests == []
    rec = gateway.last_record()
    assert (rec["status"], rec["error_type"], rec["cost"]) == (status, code, 0)
    if code in ("missing_api_key", "invalid_api_key"):
        assert rec["key_id"] is None and rec["account_id"] is None
    bal = gateway.assert_books_balance()
    assert bal.balance == 10_000_000


def test_anthropic_format_errors(gateway):
    got, answer = post(gateway.port, "/v1/messages", b"{", {
        "content-type": JSON, "x-api-key": gateway.key, "anthropic-version": "2023-06-01"})
    assert got == 400
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"


def test_oversized_body_413(make_gateway):
    gw = make_gateway(proxy={"max_request_bytes": 2048})
    body = json.dumps({"model": "gpt-test", "pad": "x" * 5000}).encode()
    status, _ = post(gw.port, "/v1/chat/completions", body,
                     {"content-type": JSON, "authorization": f"Bearer {gw.key}"})
    assert status == 413
    assert gw.sim.requests == []
    rec = gw.last_record()
    assert (rec["status"], rec["error_type"]) == (413, "request_too_large")
    assert gw.assert_books_balance().balance == 10_000_000


def test_crlf_in_header_refused(gateway):
    body = chat()
    data = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + gateway.key.encode() + b"\r\n"
            b"X-Evil: a\rInjected: b\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    status, _ = raw_request(gateway.port, data)
    assert status in (0, 400)
    assert gateway.sim.requests == []
    assert gateway.assert_books_balance().balance == 10_000_000

"""The load balancer's probe: ``GET /healthz`` on the proxy port."""

from __future__ import annotations

import http.client
import json


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_healthz_answers_without_a_key_and_leaves_no_trace(gateway):
    status, headers, body = _get(gateway.port, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers["content-type"] == "application/json"
    assert _get(gateway.port, "/healthz", "HEAD")[0] == 200
    assert gateway.sim.requests == []  # no provider contact
    assert gateway.records() == []  # a probe is not an API request: no record
    # only the exact path: anything else is still an unknown endpoint, recorded
    status, _, body = _get(gateway.port, "/healthz/x")
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_endpoint"
    assert len(gateway.records()) == 1


def test_healthz_is_503_when_the_record_writer_is_down(gateway):
    gateway.proxy.services.writer.close()
    status, _, body = _get(gateway.port, "/healthz")
    assert status == 503 and json.loads(body) == {"status": "unavailable"}

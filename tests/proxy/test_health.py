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


def test_healthz_is_503_when_the_committer_is_down(gateway):
    gateway.proxy.services.money.committer.close()
    status, _, body = _get(gateway.port, "/healthz")
    assert status == 503 and json.loads(body) == {"status": "unavailable"}


def test_finished_requests_leave_no_flow_in_memory(make_gateway):
    """A finished request keeps nothing alive: not its flow, not its state (a pending
    upstream-timeout timer once held every flow for ``upstream_timeout_ms``)."""
    import gc

    from mitmproxy import http as mhttp

    gw = make_gateway(proxy={"upstream_timeout_ms": 60_000})
    with gw.openai() as client:
        for i in range(20):
            client.chat.completions.create(model="gpt-test", max_tokens=20,
                                           messages=[{"role": "user", "content": f"hi {i}"}])
    gw.drain()
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, mhttp.HTTPFlow)]
    assert len(alive) <= 2  # at most a flow mitmproxy is still closing


def test_healthz_is_503_until_the_process_is_registered(gateway):
    """A proxy that could not register (database down at start-up) refuses every request
    that needs funds: the load balancer's health check must route around it."""
    money = gateway.proxy.services.money
    instance, money.instance_id = money.instance_id, None
    try:
        assert _get(gateway.port, "/healthz")[0] == 503
    finally:
        money.instance_id = instance
    assert _get(gateway.port, "/healthz")[0] == 200

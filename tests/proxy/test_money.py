"""Reserve-then-settle through the proxy: refusals, budgets, limits, and a race for the
last funds."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from proxy_helpers import post

from control.core.money import cost_of
from proxy_addons.pricing import hold_input_tokens as input_estimate


def body(max_tokens: int = 10) -> bytes:
    return json.dumps({"model": "gpt-test", "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": "race"}]}).encode()


def headers(key: str) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": f"Bearer {key}"}


def test_insufficient_balance_402(make_gateway):
    gw = make_gateway(balance=5)
    status, answer = post(gw.port, "/v1/chat/completions", body(), headers(gw.key))
    assert status == 402 and answer["error"]["code"] == "insufficient_funds"
    assert gw.sim.requests == []
    rec = gw.last_record()
    assert (rec["status"], rec["error_type"], rec["cost"]) == (402, "insufficient_funds", 0)
    assert gw.assert_books_balance().balance == 5


def test_key_budget_402(gateway):
    _, key = gateway.new_key(budget=10)
    status, answer = post(gateway.port, "/v1/chat/completions", body(), headers(key))
    assert status == 402 and answer["error"]["code"] == "budget_exceeded"
    assert gateway.sim.requests == []
    assert gateway.assert_books_balance().balance == 10_000_000


def test_rpm_limit_429_with_retry_after(gateway):
    import http.client

    _, key = gateway.new_key(rpm_limit=2)
    statuses = []
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", body=body(), headers=headers(key))
        resp = conn.getresponse()
        resp.read()
        statuses.append((resp.status, resp.getheader("retry-after")))
        conn.close()
    assert [s for s, _ in statuses] == [200, 200, 429]
    assert int(statuses[2][1]) >= 1
    rec = gateway.last_record()
    assert (rec["status"], rec["error_type"]) == (429, "rate_limited")
    gateway.assert_books_balance()


def test_fifty_concurrent_requests_race_for_the_last_funds(make_gateway):
    payload = body(max_tokens=10)
    hold = cost_of(input_estimate(len(payload)), 1_000_000) + cost_of(10, 2_000_000)
    funds = hold * 10
    gw = make_gateway(balance=funds)

    def one(_):
        return post(gw.port, "/v1/chat/completions", payload, headers(gw.key))[0]

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, range(50)))
    ok, refused = statuses.count(200), statuses.count(402)
    assert ok + refused == 50
    recs = gw.records()
    assert len(recs) == 50
    charged = sum(r["cost"] for r in recs)
    bal = gw.assert_books_balance()
    assert bal.balance == funds - charged >= 0
    costs = [r["cost"] for r in recs if r["status"] == 200]
    assert len(costs) == ok and all(0 < c <= hold for c in costs)
    # At least the funds' worth of worst cases fit; never more than the money allows.
    assert ok >= funds // hold
    assert ok <= (funds - hold) // min(costs) + 1
    assert len(gw.sim.requests) == ok
    assert all(r["error_type"] == "insufficient_funds" for r in recs if r["status"] == 402)


def test_a_charge_through_the_proxy_that_crosses_the_threshold_queues_one_low_balance_notice(
        make_gateway):
    from sqlalchemy import select

    from control.core.models import Notification

    gw = make_gateway(balance=1_000, wallet={"low_balance_threshold": 999})

    def low_balance_notices() -> list[tuple[bool, str, str]]:
        gw.drain()
        with gw.db.read_transaction() as s:
            return [(n.essential, n.status, repr(n.params)) for n in s.scalars(
                select(Notification).where(Notification.account_id == gw.account_id,
                                           Notification.kind == "low_balance"))]

    for _ in range(2):  # the first charge crosses the threshold, the second is already below
        status, _answer = post(gw.port, "/v1/chat/completions", body(), headers(gw.key))
        assert status == 200
    ((essential, status, params),) = low_balance_notices()
    assert essential and status == "queued"
    assert gw.key not in params
    assert gw.assert_books_balance().balance < 999


def test_concurrent_requests_with_a_cold_key_share_one_bcrypt_check(gateway, monkeypatch):
    """Single flight: 16 simultaneous first requests with one key pay one bcrypt verify."""
    import threading
    import time

    import bcrypt

    from control.core import keys as keys_module

    _, key = gateway.new_key()
    calls, gate = [], threading.Event()
    real = bcrypt.checkpw

    def slow_checkpw(secret: bytes, hashed: bytes) -> bool:
        calls.append(1)
        gate.wait(5)  # hold the first check until every request is in flight
        return real(secret, hashed)

    monkeypatch.setattr(keys_module.bcrypt, "checkpw", slow_checkpw)
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(post, gateway.port, "/v1/chat/completions", body(),
                               headers(key)) for _ in range(16)]
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the other 15 arrive while the first check is held
        gate.set()
        statuses = [f.result()[0] for f in futures]
    assert statuses == [200] * 16
    assert len(calls) == 1

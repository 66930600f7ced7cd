"""The Gateway: its stage order (without sockets, the way mitmproxy tests its addons),
fail-closed charging when a stage fails after forwarding (through the real proxy), the
metrics seam, and the actionable errors (402 amounts, unknown model, wrong base URL)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import anthropic
import openai
import pytest
from mitmproxy.test import taddons, tflow
from proxy_helpers import (
    FAULT_CUT,
    PROVIDER_KEY,
    PROVIDER_KEY_ENV,
    catalog,
    make_config,
    post,
    setup_account,
)
from sqlalchemy import select

from control.core import wallet
from control.core.db import Database
from control.core.models import Hold, RequestRecord
from proxy_addons import gateway as gateway_module
from proxy_addons.gateway import STAGES, Gateway
from proxy_addons.pricing import hold_input_tokens, worst_case_cost
from proxy_addons.runner import ProxyServer
from proxy_addons.services import build_services
from proxy_addons.sse import StreamTap

BALANCE = 10_000_000
JSON = "application/json"


def chat(prompt: str = "hello", *, stream: bool = False, max_tokens: int = 50,
         **extra: Any) -> bytes:
    return json.dumps({"model": "gpt-test", "stream": stream, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": prompt}], **extra}).encode()


def auth(key: str) -> dict[str, str]:
    return {"content-type": JSON, "authorization": f"Bearer {key}"}


# -- the order of the stages, without a proxy --------------------------------------------

def _spy(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    names = {"intake": "intake", "admit": "admit", "forward": "forward",
             "meter_headers": "meter_headers", "meter_body": "meter_body",
             "final_usage": "price", "build_record": "record"}
    for attr, stage in names.items():
        real = getattr(gateway_module, attr)
        if asyncio.iscoroutinefunction(real):
            async def wrapper(*a: Any, _real: Any = real, _stage: str = stage, **kw: Any):
                calls.append(_stage)
                return await _real(*a, **kw)
        else:
            def wrapper(*a: Any, _real: Any = real, _stage: str = stage, **kw: Any):
                calls.append(_stage)
                return _real(*a, **kw)
        monkeypatch.setattr(gateway_module, attr, wrapper)


def test_stage_order_is_the_requests_life(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv(PROVIDER_KEY_ENV, PROVIDER_KEY)
    config = make_config(tmp_path, db_url, **catalog("http://127.0.0.1:9"))
    db = Database.from_config(config)
    _, _, key = setup_account(config, db, BALANCE)
    services = build_services(config, db).start()
    calls: list[str] = []
    _spy(monkeypatch, calls)
    answer = {"choices": [{"message": {"content": "hi"}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1}}

    async def life() -> Any:
        gw = Gateway(services)
        with taddons.context(gw):
            flow = tflow.tflow(req=tflow.treq(
                method=b"POST", path=b"/v1/chat/completions", content=chat(),
                headers=((b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {key}".encode()))))
            flow.client_conn.peername = ("127.0.0.1", 5000)
            gw.requestheaders(flow)
            await gw.request(flow)
            assert flow.request.port == 9 and "authorization" in flow.request.headers
            flow.response = tflow.tresp(content=json.dumps(answer).encode(),
                                        headers=((b"content-type", b"application/json"),))
            gw.responseheaders(flow)
            await gw.response(flow)  # returns once the charge and record are durable
            return flow

    try:
        flow = asyncio.run(life())
        assert tuple(calls) == STAGES
        assert flow.response.status_code == 200
        assert services.money.committer.drain(10)
        with db.read_transaction() as s:
            (rec,) = s.scalars(select(RequestRecord)).all()  # exactly one, charged
            (hold,) = s.scalars(select(Hold)).all()
            assert rec.cost > 0 and not rec.estimated and hold.status == "settled"
            assert wallet.ledger_sum(s, rec.account_id) == BALANCE - rec.cost
    finally:
        services.close()
        db.dispose()


def test_flow_without_state_is_refused(tmp_path, db_url):
    config = make_config(tmp_path, db_url)
    services = build_services(config)

    async def run() -> Any:
        gw = Gateway(services)
        with taddons.context(gw):
            flow = tflow.tflow()  # never went through requestheaders
            await gw.request(flow)
            return flow

    try:
        flow = asyncio.run(run())
        assert flow.response is not None and flow.response.status_code == 500
        assert json.loads(flow.response.content)["error"]["code"] == "internal_error"
    finally:
        services.close()


# -- fail closed: a failure injected into each stage after forwarding ---------------------

def _boom(*_a: Any, **_kw: Any) -> Any:
    raise RuntimeError("injected")


#: stage -> (what to break, stream?, fault, policy: "withheld" | "hold" | "exact")
INJECTED = {
    "meter_headers": ("meter_headers", False, None, "withheld"),
    "meter_headers_stream": ("meter_headers", True, None, "withheld"),
    "meter_body": ("meter_body", False, None, "withheld"),
    "stream_tap": ("tap", True, None, "hold"),
    "price": ("final_usage", False, None, "hold"),
    "price_stream": ("final_usage", True, None, "hold"),
    "price_cut_stream": ("final_usage", True, FAULT_CUT, "hold"),
    "classify_cut_stream": ("classify_error", True, FAULT_CUT, "hold"),
    "record": ("build_record", False, None, "exact"),
}


@pytest.mark.parametrize("case", list(INJECTED))
def test_failure_in_each_stage_is_charged_per_policy(gateway, monkeypatch, case):
    target, stream, fault, policy = INJECTED[case]
    if target == "tap":
        monkeypatch.setattr(StreamTap, "_event", _boom)
    else:
        monkeypatch.setattr(gateway_module, target, _boom)
    body = chat(f"SIM_FAULT:{fault} story" if fault else "tell me a story", stream=stream)
    status, _ = post(gateway.port, "/v1/chat/completions", body, auth(gateway.key))
    rec = gateway.last_record()  # the request is always recorded
    assert len(gateway.records()) == 1
    hold = worst_case_cost(gateway.config.models["gpt-test"].prices,
                           hold_input_tokens(len(body)), 50)
    if policy == "withheld":
        assert status == 502 and (rec["status"], rec["cost"]) == (502, 0)
    elif policy == "hold":
        assert (rec["cost"], rec["estimated"]) == (hold, True)
    else:
        assert status == 200 and 0 < rec["cost"] < hold and rec["estimated"]
    assert rec["error_type"] == "internal_error"
    bal = gateway.assert_books_balance()  # no hold left open, ledger == balance
    assert bal.balance == BALANCE - rec["cost"]
    with gateway.db.read_transaction() as s:
        assert s.scalars(select(Hold)).one().status != "open"


# -- the metrics seam ---------------------------------------------------------------------

class RecordingObserver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args))

    def render(self) -> tuple[bytes, str]:
        return b"hushgate_requests_total 1\n", "text/plain; version=0.0.4"


def test_observer_sees_each_request_and_serves_metrics(make_gateway):
    gw = make_gateway(start=False)
    observer = RecordingObserver()
    proxy = ProxyServer(gw.config, listen_port=0, observer=observer).start()
    try:
        gw.proxy = proxy
        with gw.openai() as client:
            client.chat.completions.create(model="gpt-test", max_tokens=10,
                                           messages=[{"role": "user", "content": "hi"}])
        post(gw.port, "/v1/chat/completions", chat(), auth("hg_nope"))
        stored = gw.records()
        finished = [args[0] for name, args in observer.calls if name == "request_finished"]
        assert [r["request_id"] for r in finished] == [r["request_id"] for r in stored]
        assert finished[0]["cost"] == stored[0]["cost"] > 0
        holds = [args[0] for name, args in observer.calls if name == "holds_in_flight"]
        assert holds == [1, 0]
        assert any(name == "writer_queue" for name, _ in observer.calls)
        with urllib.request.urlopen(f"{gw.url}/metrics", timeout=5) as resp:
            assert resp.read() == b"hushgate_requests_total 1\n"
            assert resp.headers["content-type"].startswith("text/plain")
    finally:
        proxy.stop()


def test_no_metrics_without_a_renderer(gateway):
    status, _ = post(gateway.port, "/metrics", b"", {})
    assert status in (404, 405)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{gateway.url}/metrics", timeout=5)
    info.value.close()
    assert info.value.code == 404


# -- actionable errors --------------------------------------------------------------------

def test_402_says_how_much_is_needed_and_available(make_gateway):
    gw = make_gateway(balance=100)
    with gw.openai() as client, pytest.raises(openai.APIStatusError) as oai:
        client.chat.completions.create(model="gpt-test", max_tokens=200,
                                       messages=[{"role": "user", "content": "hi"}])
    err = oai.value
    assert err.status_code == 402
    assert err.body["available"] == 0.0001 and err.body["currency"] == "USD"
    assert err.body["needed"] > err.body["available"]
    assert "max_tokens" in err.body["message"]
    with gw.anthropic() as client, pytest.raises(anthropic.APIStatusError) as ant:
        client.messages.create(model="claude-test", max_tokens=200,
                               messages=[{"role": "user", "content": "hi"}])
    assert ant.value.status_code == 402
    assert ant.value.body["error"]["available"] == 0.0001
    assert "max_tokens" in ant.value.body["error"]["message"]
    assert gw.assert_books_balance().balance == 100


def test_hold_counts_every_requested_choice(make_gateway):
    gw = make_gateway(balance=100)
    body = chat(max_tokens=100, n=3)
    status, answer = post(gw.port, "/v1/chat/completions", body, auth(gw.key))
    assert status == 402
    prices = gw.config.models["gpt-test"].prices
    needed = worst_case_cost(prices, hold_input_tokens(len(body)), 100, choices=3)
    assert answer["error"]["needed"] == needed / 1_000_000
    assert needed > worst_case_cost(prices, hold_input_tokens(len(body)), 100)


def test_unknown_model_names_it_and_points_to_models(gateway):
    with gateway.openai() as client, pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope", max_tokens=10,
                                       messages=[{"role": "user", "content": "hi"}])
    assert "gpt-nope" in info.value.message and "/v1/models" in info.value.message


@pytest.mark.parametrize("suffix", ["", "/v1/v1"])
def test_wrong_base_url_gets_a_hint(gateway, suffix):
    client = openai.OpenAI(base_url=gateway.url + suffix, api_key=gateway.key, max_retries=0)
    with client, pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-test", max_tokens=10,
                                       messages=[{"role": "user", "content": "hi"}])
    assert "/v1/chat/completions" in info.value.message


def test_request_longer_than_max_is_ended_and_charged_for_delivery(make_gateway):
    gw = make_gateway(proxy={"max_request_seconds": 1, "stream_idle_timeout_ms": 5000})
    gw.sim.slow_chunk_delay_ms = 400
    with gw.openai(timeout=30) as client, pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(
                model="gpt-test", max_tokens=50, stream=True,
                messages=[{"role": "user", "content": "SIM_FAULT:slow_stream a story"}]):
            pass
    assert info.value.body["code"] == "request_timeout"
    rec = gw.last_record()
    assert (rec["status"], rec["error_type"]) == (504, "request_timeout")
    assert rec["cost"] > 0 and rec["estimated"]
    gw.assert_books_balance()


#: mitmproxy options of features that read, write or replace content (files, playback,
#: scripts, rewriting): the proxy runs without the addons behind them, so none exists.
CONTENT_FEATURES = ("save_stream_file", "hardump", "map_local", "map_remote", "modify_body",
                    "modify_headers", "scripts", "server_replay", "client_replay", "rfile",
                    "onboarding", "flow_detail", "termlog_verbosity")


def test_the_proxy_carries_no_mitmproxy_feature_that_touches_content(gateway):
    master = gateway.proxy._master
    loaded = [type(a).__name__ for a in master.addons.chain]
    assert loaded == ["Core", "DisableH2C", "Proxyserver", "DnsResolver", "NextLayer",
                      "TlsConfig", "ErrorCheck", "Safety", "Gateway", "_Ready"]
    assert [name for name in CONTENT_FEATURES if name in master.options] == []
    with pytest.raises(KeyError):
        master.options.update(save_stream_file="/tmp/flows")  # noqa: S108 - never written
    with gateway.openai() as client:  # and it still proxies
        assert client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}]).choices

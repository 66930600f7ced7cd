"""Fixtures for the provider simulator's own tests: a shared simulator (reset for every
test), simulators with special settings, and SDK clients pointed straight at it."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

from control.simulator import Simulator

CLIENT_KEY = "sk-client-test"


@pytest.fixture(scope="session")
def shared_sim() -> Iterator[Simulator]:
    simulator = Simulator(port=0).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def sim(shared_sim: Simulator) -> Iterator[Simulator]:
    """The shared simulator, with no recorded requests and no fault."""
    shared_sim.reset()
    yield shared_sim
    shared_sim.reset()


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    """``make_sim(**kwargs)`` -> a started simulator with those settings (stopped after)."""
    made: list[Simulator] = []

    def _make(**kwargs: Any) -> Simulator:
        simulator = Simulator(**kwargs).start()
        made.append(simulator)
        return simulator

    yield _make
    for simulator in made:
        simulator.stop()


def _openai_kwargs(target: Simulator, **kw: Any) -> dict[str, Any]:
    return {"base_url": f"{target.base_url}/v1", "api_key": CLIENT_KEY, "max_retries": 0,
            "timeout": 10.0, **kw}


def _anthropic_kwargs(target: Simulator, **kw: Any) -> dict[str, Any]:
    return {"base_url": target.base_url, "api_key": CLIENT_KEY, "max_retries": 0,
            "timeout": 10.0, **kw}


@pytest.fixture
def oai(sim: Simulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(**_openai_kwargs(sim)) as client:
        yield client


@pytest.fixture
def ant(sim: Simulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(**_anthropic_kwargs(sim)) as client:
        yield client


@pytest.fixture
def openai_for() -> Callable[..., openai.OpenAI]:
    """``openai_for(sim, **client_kwargs)``: a sync client (use it in ``with``)."""
    return lambda target, **kw: openai.OpenAI(**_openai_kwargs(target, **kw))


@pytest.fixture
def anthropic_for() -> Callable[..., anthropic.Anthropic]:
    """``anthropic_for(sim, **client_kwargs)``: a sync client (use it in ``with``)."""
    return lambda target, **kw: anthropic.Anthropic(**_anthropic_kwargs(target, **kw))


@pytest.fixture
def async_openai_for() -> Callable[..., openai.AsyncOpenAI]:
    """``async_openai_for(sim, **kw)``: an async client (use it in ``async with``)."""
    return lambda target, **kw: openai.AsyncOpenAI(**_openai_kwargs(target, **kw))


@pytest.fixture
def async_anthropic_for() -> Callable[..., anthropic.AsyncAnthropic]:
    """``async_anthropic_for(sim, **kw)``: an async client (use it in ``async with``)."""
    return lambda target, **kw: anthropic.AsyncAnthropic(**_anthropic_kwargs(target, **kw))


@pytest.fixture
def raw_http() -> Callable[..., tuple[int, dict[str, str], Any]]:
    """``raw_http(sim, method, path, body=None, headers=None)`` -> (status, headers, JSON
    or bytes), one request on its own connection."""

    def _call(target: Simulator, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
        try:
            conn.request(method, path, body=data,
                         headers={"content-type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            raw = resp.read()
            status, resp_headers = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        try:
            return status, resp_headers, json.loads(raw)
        except ValueError:
            return status, resp_headers, raw

    return _call

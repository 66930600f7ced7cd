"""Faults, chosen by header, by prompt marker or server-wide; each makes the SDKs fail the
way a real provider failure would."""

from __future__ import annotations

import time

import anthropic
import httpx2
import openai
import pytest


def _msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(("fault", "oai_error", "ant_error"), [
    ("status_500", openai.InternalServerError, anthropic.InternalServerError),
    ("server_error", openai.InternalServerError, anthropic.InternalServerError),
    ("status_429", openai.RateLimitError, anthropic.RateLimitError),
    ("status_400", openai.BadRequestError, anthropic.BadRequestError),
    ("status_529", openai.InternalServerError, anthropic.InternalServerError),
])
def test_status_faults_in_provider_format(oai, ant, sim, fault, oai_error, ant_error):
    prompt = f"hi SIM_FAULT:{fault} SIM_ERROR_TEXT:CANARYERR 42"
    with pytest.raises(oai_error) as info:
        oai.chat.completions.create(model="m", messages=_msgs(prompt))
    assert set(info.value.body) == {"message", "type", "param", "code"}
    assert info.value.body["message"].endswith("CANARYERR 42")
    with pytest.raises(ant_error) as ainfo:
        ant.messages.create(model="m", max_tokens=5, messages=_msgs(prompt), stream=True)
    assert ainfo.value.body["type"] == "error"
    assert ainfo.value.body["error"]["message"].endswith("CANARYERR 42")
    assert [r.fault for r in sim.requests] == [sim.requests[0].fault] * 2
    assert sim.requests[0].fault.startswith("status_")


def test_fault_by_header_and_server_wide(oai, sim):
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="m", messages=_msgs("SIM_FAULT:status_500"),
                                    extra_headers={"x-sim-fault": "status_429"})
    sim.set_fault("status_400", times=1)
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="e", input="x")
    assert oai.embeddings.create(model="e", input="x").data  # the countdown ran out
    sim.set_fault("status_500")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oai.models.list()
    sim.clear_fault()
    assert oai.models.list().data
    with pytest.raises(ValueError, match="unknown simulator fault"):
        sim.set_fault("no_such_fault")
    with pytest.raises(openai.BadRequestError, match="unknown simulator fault"):
        oai.chat.completions.create(model="m", messages=_msgs("SIM_FAULT:no_such_fault"))


def test_timeout_until_the_client_gives_up(sim, openai_for, anthropic_for):
    started = time.monotonic()
    with openai_for(sim, timeout=0.3) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=_msgs("SIM_FAULT:timeout"))
    with anthropic_for(sim, timeout=0.3) as client, pytest.raises(anthropic.APITimeoutError):
        client.messages.create(model="m", max_tokens=3, messages=_msgs("SIM_FAULT:hang"))
    assert time.monotonic() - started < 5
    assert [r.fault for r in sim.wait_for_requests(2)] == ["timeout", "timeout"]


def test_cut_midstream(oai, ant, sim):
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012
        for chunk in oai.chat.completions.create(
                model="m", stream=True, stream_options={"include_usage": True},
                messages=_msgs("SIM_REPLY:w1 w2 w3 w4 w5 w6 SIM_FAULT:cut_midstream")):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert got and "".join(got) != "w1 w2 w3 w4 w5 w6"  # some chunks, never the end
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="m", messages=_msgs("SIM_FAULT:cut"))
    events: list[str] = []
    # the anthropic SDK lets the transport error through unwrapped while iterating
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)):  # noqa: PT012
        for event in ant.messages.create(model="m", max_tokens=20, stream=True,
                                         messages=_msgs("SIM_FAULT:cut")):
            events.append(event.type)
    assert events and "message_stop" not in events
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012
        for _ in oai.responses.create(model="m", input="SIM_FAULT:cut", stream=True):
            pass
    assert oai.models.list().data  # the server is fine afterwards


def test_no_usage(oai, ant):
    chunks = list(oai.chat.completions.create(
        model="m", messages=_msgs("SIM_FAULT:no_usage"), stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"  # ended normally
    assert oai.chat.completions.create(model="m",
                                       messages=_msgs("SIM_FAULT:no_usage")).usage is None
    assert oai.responses.create(model="m", input="SIM_FAULT:no_usage").usage is None
    events = list(oai.responses.create(model="m", input="SIM_FAULT:no_usage", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.usage is None
    msg = ant.messages.create(model="m", max_tokens=5, messages=_msgs("SIM_FAULT:no_usage"))
    assert msg.usage.input_tokens is None and msg.usage.output_tokens is None
    with ant.messages.stream(model="m", max_tokens=5,
                             messages=_msgs("SIM_FAULT:no_usage")) as stream:
        assert "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.usage.input_tokens is None and final.usage.output_tokens is None


def test_slow_stream(make_sim, openai_for):
    target = make_sim(slow_chunk_delay_ms=40)
    with openai_for(target) as client:
        started = time.monotonic()
        chunks = list(client.chat.completions.create(
            model="m", stream=True, messages=_msgs("SIM_REPLY:a b c SIM_FAULT:slow_stream")))
        slow = time.monotonic() - started
        started = time.monotonic()
        list(client.chat.completions.create(model="m", stream=True,
                                            messages=_msgs("SIM_REPLY:a b c")))
        fast = time.monotonic() - started
    assert len(chunks) == 5  # role, a, b, c, finish (+ [DONE]): 5 delays of 40 ms
    assert slow >= 0.2 > fast


def test_garbage(oai, ant):
    with pytest.raises(ValueError):  # noqa: PT011 (UnicodeDecodeError / JSONDecodeError)
        oai.chat.completions.create(model="m", messages=_msgs("SIM_FAULT:garbage"))
    with pytest.raises(ValueError):  # noqa: PT011
        list(oai.chat.completions.create(model="m", messages=_msgs("SIM_FAULT:garbage"),
                                         stream=True))
    with pytest.raises(ValueError):  # noqa: PT011
        ant.messages.create(model="m", max_tokens=3, messages=_msgs("SIM_FAULT:garbage"))


def test_close_immediately(oai, ant, sim):
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="m", messages=_msgs("SIM_FAULT:close_immediately"))
    with pytest.raises(anthropic.APIConnectionError):
        ant.messages.create(model="m", max_tokens=3, messages=_msgs("SIM_FAULT:close"))
    assert len(sim.requests) == 2


def test_error_midstream(oai, ant):
    with pytest.raises(openai.APIError, match="Overloaded"):  # noqa: PT012
        for _ in oai.chat.completions.create(model="m", stream=True,
                                             messages=_msgs("SIM_FAULT:error_midstream")):
            pass
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):  # noqa: PT012
        for _ in ant.messages.create(model="m", max_tokens=9, stream=True,
                                     messages=_msgs("SIM_FAULT:error_midstream")):
            pass

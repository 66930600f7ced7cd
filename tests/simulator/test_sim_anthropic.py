"""The official anthropic SDK straight against the simulator: messages plain and streamed,
sync and async; usage follows Anthropic's split of cached and uncached input."""

from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest

from control.simulator import default_reply


def _msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_messages_plain(ant, sim):
    msg = ant.messages.create(model="sim-claude", max_tokens=100, system="be brief",
                              messages=_msgs("hello there"))
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "sim-claude"
    assert msg.content[0].text == default_reply(8) and msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 8)
    assert msg.usage.cache_read_input_tokens == 0
    req = sim.requests[-1]
    assert (req.path, req.endpoint) == ("/v1/messages", "messages")
    assert req.header("anthropic-version") and req.api_key == "sk-client-test"


def test_messages_marker_cap_and_cache(ant):
    msg = ant.messages.create(model="m", max_tokens=2,
                              messages=_msgs("SIM_REPLY:CANARY x y SIM_CACHED:2 pad"))
    assert msg.content[0].text == "CANARY x" and msg.stop_reason == "max_tokens"
    # 5 prompt words, 2 of them cached: input_tokens counts the uncached ones only
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens,
            msg.usage.output_tokens) == (3, 2, 2)


def test_messages_stream_helper(ant):
    with ant.messages.stream(model="m", max_tokens=50,
                             messages=_msgs("SIM_REPLY:one two three")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three" == final.content[0].text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 3)


def test_messages_raw_events(ant, make_sim, anthropic_for):
    events = list(ant.messages.create(model="m", max_tokens=50, stream=True,
                                      messages=_msgs("SIM_REPLY:a b")))
    assert [e.type for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]  # the SDK drops ping
    start, delta = events[0], events[-2]
    assert start.message.usage.input_tokens == 2 and start.message.usage.output_tokens == 1
    assert delta.usage.output_tokens == 2 and delta.delta.stop_reason == "end_turn"
    assert [e.delta.text for e in events[2:4]] == ["a", " b"]
    cached = make_sim(cached_tokens=1)
    with anthropic_for(cached) as client:
        first = next(iter(client.messages.create(model="m", max_tokens=5, stream=True,
                                                 messages=_msgs("w1 w2 w3"))))
    usage = first.message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (2, 1)


def test_ping_is_sent(sim, raw_http):
    status, headers, body = raw_http(sim, "POST", "/v1/messages", {
        "model": "m", "max_tokens": 3, "stream": True, "messages": _msgs("hi")})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert b"event: ping\ndata: {\"type\":\"ping\"}\n\n" in body
    assert body.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_messages_async(sim, async_anthropic_for):
    async def run():
        async with async_anthropic_for(sim) as client:
            plain = await client.messages.create(model="m", max_tokens=3, messages=_msgs("a"))
            async with client.messages.stream(model="m", max_tokens=9,
                                              messages=_msgs("SIM_REPLY:z y")) as stream:
                text = "".join([t async for t in stream.text_stream])
                final = await stream.get_final_message()
            return plain, text, final

    plain, text, final = asyncio.run(run())
    assert plain.usage.output_tokens == 3 and plain.content[0].text == default_reply(3)
    assert text == "z y" and final.usage.output_tokens == 2


def test_count_tokens_and_models(ant, sim):
    counted = ant.messages.count_tokens(model="m", system="s t",
                                        messages=_msgs("one two three"))
    assert counted.input_tokens == 5
    assert [m.id for m in ant.models.list()] == ["sim-gpt", "sim-embed", "sim-claude"]


def test_validation_errors_in_anthropic_format(sim, raw_http):
    status, _, body = raw_http(sim, "POST", "/v1/messages",
                               {"model": "m", "messages": _msgs("x")})
    assert status == 400
    assert body["type"] == "error"
    assert body["error"] == {"type": "invalid_request_error",
                             "message": "max_tokens: Field required"}
    status, _, body = raw_http(sim, "POST", "/v1/messages", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


def test_required_key(make_sim, anthropic_for, openai_for, raw_http):
    target = make_sim(require_key="sk-prov-1")
    with anthropic_for(target, api_key="sk-prov-1") as client:
        assert client.messages.create(model="m", max_tokens=1, messages=_msgs("x")).content
    status, _, _ = raw_http(target, "POST", "/v1/messages",
                            {"model": "m", "max_tokens": 1, "messages": _msgs("x")},
                            {"x-api-key": "sk-prov-1"})
    assert status == 200
    with anthropic_for(target, api_key="sk-wrong") as client, \
            pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model="m", max_tokens=1, messages=_msgs("x"))
    assert info.value.body["error"]["type"] == "authentication_error"
    with openai_for(target, api_key="sk-wrong") as client, \
            pytest.raises(openai.AuthenticationError) as oinfo:
        client.models.list()
    assert oinfo.value.body["code"] == "invalid_api_key"
    assert "sk-wrong" not in str(oinfo.value.body)
    with openai_for(target, api_key="sk-prov-1") as client:
        assert client.models.list().data
    assert [r.api_key for r in target.requests] == ["sk-prov-1", "sk-prov-1", "sk-wrong",
                                                    "sk-wrong", "sk-prov-1"]

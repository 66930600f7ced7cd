"""The official openai SDK straight against the simulator: every endpoint, sync and async,
streaming and not; usage equals the documented function."""

from __future__ import annotations

import asyncio

from control.simulator import default_reply, embedding_vector, expected_usage


def _msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_chat_plain(oai, sim):
    messages = [{"role": "system", "content": "be brief"}, *_msgs("hello there world")]
    resp = oai.chat.completions.create(model="sim-gpt", messages=messages)
    assert resp.object == "chat.completion" and resp.model == "sim-gpt"
    assert resp.choices[0].message.content == default_reply(8)
    assert resp.choices[0].finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens,
            resp.usage.total_tokens) == (5, 8, 13)
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    req = sim.requests[-1]
    assert (req.method, req.path, req.endpoint) == ("POST", "/v1/chat/completions", "chat")
    assert req.header("authorization") == "Bearer sk-client-test"
    assert req.api_key == "sk-client-test"
    assert req.body["messages"] == messages


def test_chat_reply_marker_cap_and_cache(oai):
    text = "SIM_REPLY:CANARY-1  two three SIM_CACHED:2"
    resp = oai.chat.completions.create(model="m", messages=_msgs(text))
    assert resp.choices[0].message.content == "CANARY-1  two three"
    assert resp.usage.completion_tokens == 3
    assert resp.usage.prompt_tokens == 4  # markers are words too
    assert resp.usage.prompt_tokens_details.cached_tokens == 2
    capped = oai.chat.completions.create(model="m", messages=_msgs(text),
                                         max_completion_tokens=2)
    assert capped.choices[0].message.content == "CANARY-1  two"
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 2


def test_chat_stream_without_usage(oai):
    chunks = list(oai.chat.completions.create(model="m", messages=_msgs("SIM_REPLY:a b c"),
                                              stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["a", " b", " c"]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_stream_with_usage(oai, sim):
    body = {"model": "m", "messages": _msgs("count these four words"), "max_tokens": 5}
    chunks = list(oai.chat.completions.create(**body, stream=True,
                                              stream_options={"include_usage": True}))
    expected = expected_usage(body)
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 5)
    assert last.usage.completion_tokens == expected.completion_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == default_reply(5)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert sim.requests[-1].body["stream_options"] == {"include_usage": True}


def test_legacy_completions(oai):
    resp = oai.completions.create(model="m", prompt="say three words", max_tokens=4)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == default_reply(4)
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (3, 4)
    chunks = list(oai.completions.create(model="m", prompt="SIM_REPLY:x y", stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "x y"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2
    plain = list(oai.completions.create(model="m", prompt="SIM_REPLY:x y", stream=True))
    assert all(c.usage is None for c in plain)


def test_embeddings_base64_default_and_float(oai, sim):
    resp = oai.embeddings.create(model="sim-embed", input=["one two", "three"])
    assert sim.requests[-1].body["encoding_format"] == "base64"  # the SDK's default
    assert [d.embedding for d in resp.data] == [embedding_vector("one two", 8),
                                                embedding_vector("three", 8)]
    assert (resp.usage.prompt_tokens, resp.usage.total_tokens) == (3, 3)
    floats = oai.embeddings.create(model="sim-embed", input="one two", encoding_format="float",
                                   dimensions=12)
    assert floats.data[0].embedding == embedding_vector("one two", 12)
    assert floats.usage.prompt_tokens == 2
    raw = oai.embeddings.create(model="sim-embed", input="x", encoding_format="base64")
    assert isinstance(raw.data[0].embedding, str)


def test_responses_plain(oai):
    resp = oai.responses.create(model="m", input="hi there", instructions="be nice")
    assert resp.status == "completed" and resp.output_text == default_reply(8)
    u = resp.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (4, 8, 12)
    assert u.input_tokens_details.cached_tokens == 0
    capped = oai.responses.create(model="m", input="SIM_REPLY:a b c SIM_CACHED:1",
                                  max_output_tokens=2)
    assert capped.status == "incomplete" and capped.output_text == "a b"
    assert capped.incomplete_details.reason == "max_output_tokens"
    assert capped.usage.input_tokens_details.cached_tokens == 1


def test_responses_stream(oai):
    events = list(oai.responses.create(model="m", input="SIM_REPLY:one two", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 2
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "one two"
    final = events[-1].response
    assert final.output_text == "one two"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 2)
    with oai.responses.stream(model="m", input="x y z") as stream:
        for _ in stream:
            pass
        helper_final = stream.get_final_response()
    assert helper_final.usage.input_tokens == 3


def test_models(oai):
    assert [m.id for m in oai.models.list()] == ["sim-gpt", "sim-embed", "sim-claude"]


def test_async_every_endpoint(sim, async_openai_for):
    async def run():
        async with async_openai_for(sim) as client:
            plain = await client.chat.completions.create(model="m", messages=_msgs("a b"))
            stream = await client.chat.completions.create(
                model="m", messages=_msgs("SIM_REPLY:p q"), stream=True,
                stream_options={"include_usage": True})
            chunks = [c async for c in stream]
            comp = await client.completions.create(model="m", prompt="z")
            emb = await client.embeddings.create(model="e", input="w")
            resp_stream = await client.responses.create(model="m", input="r", stream=True)
            events = [e async for e in resp_stream]
            return plain, chunks, comp, emb, events

    plain, chunks, comp, emb, events = asyncio.run(run())
    assert plain.usage.prompt_tokens == 2 and plain.usage.completion_tokens == 8
    assert chunks[-1].usage.completion_tokens == 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "p q"
    assert comp.usage.prompt_tokens == 1
    assert emb.data[0].embedding == embedding_vector("w", 8)
    assert events[-1].response.usage.output_tokens == 8
    assert len(sim.requests) == 5

"""The official SDKs through the real proxy to the simulator: every endpoint, sync and
async, streaming and not. Each test checks the answer, the debit and the record."""

from __future__ import annotations

import asyncio

import pytest
from proxy_helpers import PROVIDER_KEY, last_upstream

from control.core.money import cost_of

GPT = (1_000_000, 2_000_000, 500_000)
CLAUDE = (3_000_000, 15_000_000, 300_000)


def expected_cost(prices, inp, out, cached=0):
    return cost_of(inp - cached, prices[0]) + cost_of(cached, prices[2]) + cost_of(out, prices[1])


def check_money(gw, rec, start=10_000_000):
    bal = gw.assert_books_balance()
    assert bal.balance == start - rec["cost"]


def test_openai_chat_sync(gateway):
    with gateway.openai() as client:
        resp = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hello"}], max_tokens=20)
    assert resp.choices[0].message.content
    rec = gateway.last_record()
    assert (rec["status"], rec["endpoint"], rec["model"], rec["provider"], rec["stream"]) == \
        (200, "chat.completions", "gpt-test", "sim-openai", False)
    assert rec["input_tokens"] == resp.usage.prompt_tokens
    assert rec["output_tokens"] == resp.usage.completion_tokens
    assert rec["estimated"] is False and rec["key_id"] == gateway.key_id
    assert rec["cost"] == expected_cost(GPT, rec["input_tokens"], rec["output_tokens"],
                                        rec["cached_tokens"]) > 0
    check_money(gateway, rec)
    up = last_upstream(gateway.sim)
    assert up.header("authorization") == f"Bearer {PROVIDER_KEY}"
    assert up.json()["model"] == "sim-gpt"
    assert gateway.key not in repr(up.headers)


def test_openai_chat_stream_hides_injected_usage(gateway):
    with gateway.openai() as client:
        stream = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True)
        chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    up = last_upstream(gateway.sim)
    assert up.json()["stream_options"] == {"include_usage": True}
    rec = gateway.last_record()
    assert rec["stream"] is True and rec["status"] == 200 and rec["estimated"] is False
    assert rec["output_tokens"] > 0 and rec["input_tokens"] > 0
    check_money(gateway, rec)


def test_openai_chat_stream_with_usage_requested(gateway):
    with gateway.openai() as client:
        chunks = list(client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}))
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1
    rec = gateway.last_record()
    assert rec["output_tokens"] == usage[0].completion_tokens
    check_money(gateway, rec)


def test_openai_async_stream_and_not(gateway):
    async def run():
        async with gateway.async_openai() as client:
            plain = await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "a"}])
            stream = await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "b"}], stream=True)
            parts = [c async for c in stream]
            return plain, parts

    plain, parts = asyncio.run(run())
    assert plain.choices[0].message.content and parts
    recs = gateway.records()
    assert [r["stream"] for r in recs] == [False, True]
    bal = gateway.assert_books_balance()
    assert bal.balance == 10_000_000 - sum(r["cost"] for r in recs)


def test_openai_completions_and_embeddings(gateway):
    with gateway.openai() as client:
        comp = client.completions.create(model="gpt-test", prompt="say", max_tokens=5)
        emb = client.embeddings.create(model="embed-test", input=["one", "two"])
    assert comp.choices and emb.data
    recs = gateway.records()
    assert [r["endpoint"] for r in recs] == ["completions", "embeddings"]
    assert recs[1]["output_tokens"] == 0 and recs[1]["input_tokens"] > 0
    gateway.assert_books_balance()


def test_openai_responses(gateway):
    with gateway.openai() as client:
        resp = client.responses.create(model="gpt-test", input="hello")
    assert resp.output_text
    rec = gateway.last_record()
    assert rec["endpoint"] == "responses" and rec["status"] == 200
    assert rec["output_tokens"] > 0 and not rec["estimated"]
    check_money(gateway, rec)


def test_anthropic_sync(gateway):
    with gateway.anthropic() as client:
        msg = client.messages.create(model="claude-test", max_tokens=50,
                                     messages=[{"role": "user", "content": "hello"}])
    assert msg.content[0].text
    rec = gateway.last_record()
    assert (rec["endpoint"], rec["provider"], rec["status"]) == ("messages", "sim-anthropic", 200)
    assert rec["output_tokens"] == msg.usage.output_tokens
    assert rec["cost"] == expected_cost(CLAUDE, rec["input_tokens"], rec["output_tokens"],
                                        rec["cached_tokens"])
    check_money(gateway, rec)
    up = last_upstream(gateway.sim)
    assert up.header("x-api-key") == PROVIDER_KEY and up.header("authorization") is None
    assert up.header("anthropic-version")


def test_anthropic_stream_sync_and_async(gateway):
    with gateway.anthropic() as client, client.messages.stream(
            model="claude-test", max_tokens=50,
            messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text

    async def run():
        async with gateway.async_anthropic() as client:
            out = []
            stream = await client.messages.create(
                model="claude-test", max_tokens=50, stream=True,
                messages=[{"role": "user", "content": "hi"}])
            async for event in stream:
                out.append(event.type)
            return out

    types = asyncio.run(run())
    assert "message_stop" in types
    recs = gateway.records()
    assert all(r["stream"] and r["status"] == 200 and not r["estimated"] for r in recs)
    assert recs[0]["output_tokens"] == final.usage.output_tokens
    bal = gateway.assert_books_balance()
    assert bal.balance == 10_000_000 - sum(r["cost"] for r in recs)


def test_models_list_filtered_by_scope(gateway):
    _, scoped = gateway.new_key(allowed_models=["gpt-test"])
    with gateway.openai() as client:
        all_ids = [m.id for m in client.models.list()]
    with gateway.openai(key=scoped) as client:
        scoped_ids = [m.id for m in client.models.list()]
        import openai

        with pytest.raises(openai.PermissionDeniedError):
            client.embeddings.create(model="embed-test", input="x")
    assert set(all_ids) == {"gpt-test", "embed-test", "claude-test"}
    assert scoped_ids == ["gpt-test"]
    recs = gateway.records()
    assert recs[-1]["status"] == 403 and recs[-1]["error_type"] == "model_not_allowed"
    assert gateway.sim.requests == []
    gateway.assert_books_balance()

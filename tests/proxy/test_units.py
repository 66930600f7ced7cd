"""The pipeline's pure parsing and decision functions, without a proxy."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.http import Headers

from control.core.config import Model, Prices, Provider
from proxy_addons.authenticate import extract_key
from proxy_addons.forward import upstream_headers, upstream_target
from proxy_addons.intake import check_headers, query_has_key
from proxy_addons.limits import SlidingWindow
from proxy_addons.meter import classify_error
from proxy_addons.pricing import (
    Usage,
    charged_input_tokens,
    final_usage,
    hold_input_tokens,
    usage_cost,
    worst_case_cost,
)
from proxy_addons.route import parse_body, requested_choices, requested_output_tokens, route
from proxy_addons.safety import RedactingFilter, unsafe_options
from proxy_addons.services import privacy_ip
from proxy_addons.sse import StreamTap, raw_text_chars, read_json_body, text_chars, usage_from_obj
from proxy_addons.state import FlowState, Refusal
from proxy_addons.wire import error_body

OPENAI = Provider("p", "https://api.example.com", "openai", "K", None, True, None)
ANTHROPIC = Provider("a", "https://api.anthropic.example/", "anthropic", "K", None, True, None)
GPT = Model("gpt", OPENAI, "gpt-up", ("chat.completions", "completions", "responses"),
            Prices(1_000_000, 2_000_000, 500_000), 100)


class _Config:
    models = {"gpt": GPT}


@pytest.mark.parametrize(("headers", "expected"), [
    ({"authorization": "Bearer abc"}, "abc"),
    ({"authorization": "bearer  abc "}, "abc"),
    ({"authorization": "Basic abc"}, ""),
    ({"x-api-key": "abc"}, "abc"),
    ({"authorization": "Bearer a", "x-api-key": "b"}, "a"),
    ({}, None),
])
def test_extract_key(headers, expected):
    assert extract_key(Headers(**{k.replace("-", "_"): v for k, v in headers.items()})) \
        == expected


@pytest.mark.parametrize(("query", "refused"), [
    ("key=hg_x", True), ("api_key=1", True), ("foo=hg_abc", True), ("x=Bearer%20y", True),
    ("beta=true", False), ("limit=10&order=asc", False),
])
def test_query_has_key(query, refused):
    assert query_has_key(query) is refused


@pytest.mark.parametrize(("method", "path", "headers", "tls", "peer", "status"), [
    ("POST", "/v1/chat/completions", {"content-type": "application/json"}, False, "127.0.0.1",
     None),
    ("POST", "/v1/chat/completions", {"content-type": "application/json"}, False, "10.0.0.2",
     403),
    ("POST", "/v1/chat/completions", {"content-type": "application/json"}, True, "10.0.0.2",
     None),
    ("POST", "/v1/nope", {"content-type": "application/json"}, False, "::1", 404),
    ("GET", "/v1/chat/completions", {}, False, "127.0.0.1", 405),
    ("POST", "/v1/messages?key=hg_1", {"content-type": "application/json"}, False,
     "127.0.0.1", 400),
    ("POST", "/v1/messages", {"content-type": "text/plain"}, False, "127.0.0.1", 400),
    ("POST", "/v1/messages", {"content-type": "application/json", "content-length": "99999"},
     False, "127.0.0.1", 413),
    ("GET", "/v1/models", {}, False, "127.0.0.1", None),
])
def test_check_headers(method, path, headers, tls, peer, status):
    h = Headers(**{k.replace("-", "_"): v for k, v in headers.items()})
    if status is None:
        check_headers(method, path, h, tls=tls, peer=peer, allow_plain_http=False,
                      max_bytes=1024)
    else:
        with pytest.raises(Refusal) as info:
            check_headers(method, path, h, tls=tls, peer=peer, allow_plain_http=False,
                          max_bytes=1024)
        assert info.value.status == status


@pytest.mark.parametrize(("raw", "code"), [
    (b"", "invalid_json"), (b"{", "invalid_json"), (b"[]", "invalid_json"),
    (b'{"model": "\xff"}', "invalid_encoding"), (b"[" * 100000, "invalid_json"),
])
def test_parse_body_refuses(raw, code):
    with pytest.raises(Refusal) as info:
        parse_body(raw)
    assert (info.value.status, info.value.code) == (400, code)


@pytest.mark.parametrize(("body", "endpoint", "fmt", "status", "code"), [
    ({"messages": []}, "chat.completions", "openai", 400, "missing_model"),
    ({"model": 3}, "chat.completions", "openai", 400, "missing_model"),
    ({"model": "nope"}, "chat.completions", "openai", 404, "model_not_found"),
    ({"model": "gpt"}, "messages", "anthropic", 404, "model_not_found"),
    ({"model": "gpt"}, "embeddings", "openai", 404, "model_not_found"),
    ({"model": "gpt", "stream": "yes"}, "chat.completions", "openai", 400, "invalid_request"),
    ({"model": "gpt", "max_tokens": 0}, "chat.completions", "openai", 400, "invalid_request"),
])
def test_route_refuses(body, endpoint, fmt, status, code):
    with pytest.raises(Refusal) as info:
        route(_Config(), endpoint, fmt, json.dumps(body).encode(), None)
    assert (info.value.status, info.value.code) == (status, code)


@pytest.mark.parametrize(("body", "wants_usage", "injected"), [
    ({"model": "gpt", "stream": True}, False, True),
    ({"model": "gpt", "stream": True, "stream_options": {"include_usage": True}}, True, True),
    ({"model": "gpt"}, False, False),
])
def test_route_rewrites_model_and_injects_usage(body, wants_usage, injected):
    routed = route(_Config(), "chat.completions", "openai", json.dumps(body).encode(), None)
    sent = json.loads(routed.upstream_body)
    assert sent["model"] == "gpt-up"
    assert routed.client_wants_usage is wants_usage
    assert (sent.get("stream_options", {}).get("include_usage") is True) is injected


@pytest.mark.parametrize(("endpoint", "body", "expected"), [
    ("chat.completions", {"max_tokens": 10}, 10),
    ("chat.completions", {"max_completion_tokens": 1000}, 100),
    ("chat.completions", {}, 100),
    ("responses", {"max_output_tokens": 7}, 7),
    ("embeddings", {"max_tokens": 7}, 0),
])
def test_requested_output_tokens(endpoint, body, expected):
    assert requested_output_tokens(endpoint, body, GPT) == expected


@pytest.mark.parametrize(("base", "path", "expected"), [
    ("https://api.openai.com", "/v1/chat/completions",
     ("https", "api.openai.com", 443, "/v1/chat/completions")),
    ("https://api.groq.com/openai/v1", "/v1/chat/completions",
     ("https", "api.groq.com", 443, "/openai/v1/chat/completions")),
    ("http://127.0.0.1:9999", "/v1/messages", ("http", "127.0.0.1", 9999, "/v1/messages")),
])
def test_upstream_target(base, path, expected):
    assert upstream_target(base, path) == expected


def test_upstream_headers_whitelist():
    client = Headers(authorization="Bearer hg_x", cookie="c=1", x_forwarded_for="1.2.3.4",
                     x_api_key="hg_y", openai_organization="org", content_type="application/json",
                     x_stainless_os="Linux", anthropic_version="2023-06-01")
    openai = upstream_headers(client, OPENAI, "sk-p", "api.example.com")
    assert openai["authorization"] == "Bearer sk-p"
    assert set(openai.keys()) == {"content-type", "anthropic-version", "host", "user-agent",
                                  "accept-encoding", "authorization"}
    anthropic = upstream_headers(client, ANTHROPIC, "sk-a", "api.anthropic.example")
    assert anthropic["x-api-key"] == "sk-a" and "authorization" not in anthropic
    assert anthropic["anthropic-version"] == "2023-06-01"


@pytest.mark.parametrize(("obj", "expected"), [
    ({"usage": {"prompt_tokens": 10, "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 4}}}, (10, 3, 4)),
    ({"usage": {"prompt_tokens": 8, "total_tokens": 8}}, (8, 0, 0)),
    ({"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1,
                                                     "cache_read_input_tokens": 2}}}, (7, 1, 2)),
    ({"type": "message_delta", "usage": {"output_tokens": 9}}, (0, 9, 0)),
    ({"type": "response.completed", "response": {"usage": {
        "input_tokens": 4, "output_tokens": 6, "input_tokens_details": {"cached_tokens": 1}}}},
     (4, 6, 1)),
    ({"choices": []}, None),
    ([1, 2], None),
])
def test_usage_from_obj(obj, expected):
    usage = usage_from_obj(obj)
    assert (None if usage is None else
            (usage.input_tokens, usage.output_tokens, usage.cached_tokens)) == expected


def _events(*objs):
    return [b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs] + [b"data: [DONE]\n\n"]


@pytest.mark.parametrize("split", [1, 7, 64, 100000])
@pytest.mark.parametrize("hide", [True, False])
def test_stream_tap_hides_only_the_usage_chunk(split, hide):
    chunks = _events({"choices": [{"delta": {"content": "hello world"}}]},
                     {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    data = b"".join(chunks)
    tap = StreamTap("openai", hide_usage_chunk=hide)
    out = b""
    for i in range(0, len(data), split):
        got = tap(data[i:i + split])
        out += got if isinstance(got, bytes) else b"".join(got)
    got = tap(b"")
    out += got if isinstance(got, bytes) else b"".join(got)
    assert out == (chunks[0] + chunks[2] if hide else data)
    assert (tap.usage.input_tokens, tap.usage.output_tokens) == (3, 2)
    assert tap.text == len("hello world")


_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(content=_TEXT, arguments=_TEXT, refusal=st.none() | _TEXT,
       ascii_only=st.booleans(), usage_null=st.booleans(), spaced=st.booleans())
def test_stream_tap_counts_a_plain_chunk_exactly_without_parsing(
        content, arguments, refusal, ascii_only, usage_null, spaced):
    """The stream's hot path reads a text chunk's characters from the raw JSON; it must
    agree with a full parse whatever the text holds (quotes, escapes, non-ASCII)."""
    delta = {"role": "assistant", "content": content,
             "tool_calls": [{"index": 0, "function": {"name": "f", "arguments": arguments}}]}
    if refusal is not None:
        delta["refusal"] = refusal
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": delta, "logprobs": {"content": [
                 {"token": "tok", "logprob": -1.0}]}, "finish_reason": None}]}
    if usage_null:
        chunk["usage"] = None
    raw = json.dumps(chunk, ensure_ascii=ascii_only,
                     separators=(", ", ": ") if spaced else (",", ":")).encode()
    expected = text_chars(chunk["choices"])
    assert raw_text_chars(raw) == expected
    tap = StreamTap("openai")
    tap(b"data: " + raw + b"\n\n")
    tap(b"")
    assert tap.text == expected and not tap.usage.seen


def test_stream_tap_never_returns_empty_bytes_for_data():
    tap = StreamTap("openai", hide_usage_chunk=True)
    assert tap(b"data: {") == []  # held until the event ends, never b"" (would end the body)


def test_stream_tap_anthropic_cumulative_usage():
    tap = StreamTap("anthropic")
    for obj in ({"type": "message_start", "message": {"usage": {"input_tokens": 11,
                                                                "output_tokens": 1}}},
                {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hey"}},
                {"type": "message_delta", "usage": {"output_tokens": 5}}):
        tap(b"event: x\ndata: " + json.dumps(obj).encode() + b"\n\n")
    tap(b"")
    assert (tap.usage.input_tokens, tap.usage.output_tokens, tap.text) == (11, 5, 3)


def test_stream_tap_bounded_line():
    tap = StreamTap("openai", hide_usage_chunk=True)
    big = b"data: " + b"x" * (300 * 1024)
    out = tap(big)
    assert out == big and not tap.broken  # passed through unparsed; counts for nothing


def test_read_json_body():
    body = json.dumps({"choices": [{"message": {"content": "abcd"}}],
                       "usage": {"prompt_tokens": 2, "completion_tokens": 1}}).encode()
    usage, chars = read_json_body(body)
    assert usage.output_tokens == 1 and chars == 4
    assert read_json_body(body[:-3]) is None  # cut
    assert read_json_body(b"<html>oops</html>") is None and read_json_body(b"[1]") is None


def test_stream_tap_forwards_whole_events_only():
    tap = StreamTap("openai")
    assert tap(b'data: {"choices": []}\n\ndata: {"cho') == b'data: {"choices": []}\n\n'
    assert tap(b'ices": []}\n\n') == b'data: {"choices": []}\n\n'
    assert tap.delivered == 2 * len(b'data: {"choices": []}\n\n')


def test_sliding_window():
    w = SlidingWindow(60)
    assert w.try_acquire("k", 2, now=0) is None
    assert w.try_acquire("k", 2, now=1) is None
    assert w.try_acquire("k", 2, now=2) == 58
    assert w.try_acquire("k", 2, now=61) is None


@pytest.mark.parametrize(("mode", "peer", "expected"), [
    ("off", "1.2.3.4", None),
    ("truncated", "1.2.3.4", "1.2.3.0/24"),
    ("truncated", "2001:db8:1:2::5", "2001:db8:1::/48"),
    ("truncated", "::ffff:1.2.3.4", "1.2.3.0/24"),
])
def test_privacy_ip(mode, peer, expected):
    assert privacy_ip(mode, peer, b"k") == expected


def test_privacy_ip_hashed_is_stable_and_not_the_ip():
    a, b = privacy_ip("hashed", "1.2.3.4", b"k"), privacy_ip("hashed", "1.2.3.4", b"k")
    assert a == b and "1.2.3" not in a and len(a) <= 64


def test_usage_cost_splits_cached():
    assert usage_cost(GPT.prices, Usage(1_000_000, 1_000_000, 500_000)) == 500_000 + 250_000 \
        + 2_000_000


@pytest.mark.parametrize(("forwarded", "status", "msg", "expected"), [
    (True, 200, "Client disconnected.", (499, "client_disconnected")),
    (True, None, "Connection refused", (502, "upstream_unreachable")),
    (True, 200, "server closed connection", (502, "upstream_cut")),
    (False, None, "Request body exceeds mitmproxy's body_size_limit.",
     (413, "request_too_large")),
])
def test_classify_error(forwarded, status, msg, expected):
    state = FlowState(request_id="x" * 16, time=None)  # type: ignore[arg-type]
    state.forwarded, state.upstream_status = forwarded, status
    assert classify_error(state, msg) == expected


def test_final_usage_estimates_when_missing():
    usage, estimated = final_usage(Usage(), text_chars=40, request_bytes=400, complete=True)
    assert estimated and (usage.input_tokens, usage.output_tokens) == (100, 10)


def test_final_usage_exact_when_reported():
    reported = Usage(10, 5, 0, seen=True)
    assert final_usage(reported, text_chars=40, request_bytes=400, complete=True) \
        == (reported, False)
    usage, estimated = final_usage(reported, text_chars=40, request_bytes=400, complete=False)
    assert estimated and (usage.input_tokens, usage.output_tokens) == (10, 10)


def test_the_two_estimates_side_by_side():
    # the hold is the generous worst case; the charge without usage is the best guess
    assert hold_input_tokens(400) == 134 > charged_input_tokens(400) == 100
    assert hold_input_tokens(0) == charged_input_tokens(0) == 1


@pytest.mark.parametrize(("endpoint", "body", "choices"), [
    ("chat.completions", {}, 1), ("chat.completions", {"n": 3}, 3),
    ("completions", {"n": 2, "best_of": 5}, 5), ("messages", {"n": 4}, 1),
])
def test_requested_choices(endpoint, body, choices):
    assert requested_choices(endpoint, body) == choices


@pytest.mark.parametrize("bad", [0, -1, True, "2", 1.5])
def test_requested_choices_refuses_bad_n(bad):
    with pytest.raises(Refusal) as info:
        requested_choices("chat.completions", {"n": bad})
    assert info.value.status == 400 and info.value.param == "n"


def test_worst_case_counts_every_choice():
    assert worst_case_cost(GPT.prices, 10, 100, choices=3) == \
        worst_case_cost(GPT.prices, 10, 300)


@pytest.mark.parametrize(("values", "bad"), [
    ({"flow_detail": 2}, ["flow_detail"]), ({"save_stream_file": "/tmp/x"}, ["save_stream_file"]),
    ({"termlog_verbosity": "info"}, ["termlog_verbosity"]), ({"flow_detail": 0}, []),
    ({"connection_strategy": "eager", "ssl_insecure": True},
     ["connection_strategy", "ssl_insecure"]),
])
def test_unsafe_options(values, bad):
    assert unsafe_options(values) == bad


def test_redacting_filter_keeps_only_the_head():
    import logging

    record = logging.LogRecord("mitmproxy.proxy", logging.WARNING, "", 0,
                               "Bad HTTP request line: %r", (b"GET /?secret",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "Bad HTTP request line"


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_error_body_shapes(fmt):
    body = error_body(fmt, 402, "insufficient_funds", "no money")
    if fmt == "openai":
        assert set(body["error"]) == {"message", "type", "code", "param"}
    else:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}

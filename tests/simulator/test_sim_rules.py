"""The simulator's documented rules: token counting, markers, the reply plan, fault names."""

from __future__ import annotations

import array
import base64

import pytest

from control.simulator import (
    Markers,
    UnknownFault,
    count_words,
    default_reply,
    embedding_vector,
    expected_usage,
    marker_text,
    prompt_tokens,
)
from control.simulator.faults import FaultSwitch, normalize, select, status_of


def test_count_words():
    assert count_words("") == 0
    assert count_words("one") == 1
    assert count_words("  one\ttwo\nthree  ") == 3


@pytest.mark.parametrize(("body", "expected"), [
    ({"messages": [{"role": "user", "content": "hello there"}]}, 2),
    ({"messages": [{"role": "system", "content": "be nice"},
                   {"role": "user", "content": [{"type": "text", "text": "a b c"},
                                                {"type": "image_url", "image_url": {}}]}]}, 5),
    ({"system": [{"type": "text", "text": "sys words"}],
      "messages": [{"role": "user", "content": "x"}]}, 3),
    ({"instructions": "do it", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "one two"}]}]}, 4),
    ({"prompt": ["a b", "c"]}, 3),
    ({"input": [[1, 2, 3], [4]]}, 4),
    ({"input": "one two three"}, 3),
    ({"messages": [{"role": "user", "content": ""}]}, 1),  # minimum 1
    ({}, 1),
])
def test_prompt_tokens(body, expected):
    assert prompt_tokens(body) == expected


def test_markers_run_to_the_next_marker():
    m = Markers.parse("hi SIM_REPLY:a  b c SIM_FAULT:cut SIM_ERROR_TEXT:x y SIM_CACHED:3")
    assert (m.reply, m.fault, m.error_text, m.cached) == ("a  b c", "cut", "x y", 3)
    assert Markers.parse("nothing here") == Markers()


def test_marker_text_is_the_last_user_message():
    body = {"messages": [{"role": "user", "content": "SIM_FAULT:timeout"},
                         {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": [{"type": "text", "text": "SIM_REPLY:z"}]}]}
    assert marker_text(body) == "SIM_REPLY:z"
    assert marker_text({"prompt": ["a", "SIM_REPLY:b"]}) == "SIM_REPLY:b"
    assert marker_text({"input": "SIM_REPLY:c"}) == "SIM_REPLY:c"


def test_plan_reply_truncation_and_cache():
    body = {"max_tokens": 2, "messages": [{"role": "user", "content": "SIM_REPLY:a  b c"}]}
    p = expected_usage(body)
    assert p.pieces == ("a", "  b") and p.truncated and p.completion_tokens == 2
    assert p.prompt_tokens == 3  # "SIM_REPLY:a", "b", "c"
    full = expected_usage({"messages": [{"role": "user", "content": "SIM_REPLY:a  b c"}]})
    assert full.text == "a  b c" and not full.truncated
    default = expected_usage({"messages": [{"role": "user", "content": "hi"}]}, chunks=3)
    assert default.text == default_reply(3) == "alpha bravo charlie"
    cached = expected_usage({"messages": [{"role": "user", "content": "SIM_CACHED:9 two"}]},
                            cached_tokens=1)
    assert cached.cached_tokens == 2  # capped at the prompt tokens
    assert expected_usage({"messages": [{"role": "user", "content": "x"}]},
                          cached_tokens=1).cached_tokens == 1


def test_embedding_vector_is_exact_in_float32():
    vec = embedding_vector("hello", 40)
    assert len(vec) == 40 and vec == embedding_vector("hello", 40)
    assert vec != embedding_vector("other", 40)
    packed = base64.b64encode(array.array("f", vec).tobytes())
    assert array.array("f", base64.b64decode(packed)).tolist() == vec


def test_fault_names():
    assert normalize("server_error") == "status_500"
    assert normalize("CUT") == "cut_midstream"
    assert normalize("hang") == "timeout"
    assert normalize("status_503") == "status_503"
    assert status_of("status_418") == 418 and status_of("timeout") is None
    with pytest.raises(UnknownFault):
        normalize("status_200")
    with pytest.raises(UnknownFault):
        normalize("nope")


def test_fault_selection_order_and_countdown():
    switch = FaultSwitch()
    switch.set("garbage", times=2)
    assert select("timeout", "cut", switch) == "timeout"
    assert select(None, "cut", switch) == "cut_midstream"
    assert select(None, None, switch) == "garbage"
    assert select(None, None, switch) == "garbage"
    assert select(None, None, switch) is None
    switch.set("no_usage")
    assert switch.current == "no_usage"
    switch.clear()
    assert select(None, None, switch) is None

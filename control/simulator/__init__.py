"""A built-in LLM provider simulator speaking the OpenAI and Anthropic wire formats.

Used by the test suite (behind a real proxy, driven by the official SDKs), by benchmarks,
and by the first-run demo. Start it with ``Simulator(port=0).start()`` (background thread)
or ``python -m control.simulator --port 9999``.

Usage figures are deterministic (see :mod:`control.simulator.text`): prompt tokens are
``max(1, words)`` of the prompt text, completion tokens the words generated. Faults are
chosen per request by the ``x-sim-fault`` header, a ``SIM_FAULT:<name>`` marker in the
last user message, or ``Simulator.set_fault``.
"""

from control.simulator.faults import (
    ALIASES,
    CLOSE_IMMEDIATELY,
    CUT_MIDSTREAM,
    ERROR_MIDSTREAM,
    FAULT_HEADER,
    FAULTS,
    GARBAGE,
    NO_USAGE,
    SLOW_STREAM,
    STATUS_400,
    STATUS_429,
    STATUS_500,
    TIMEOUT,
    UnknownFault,
)
from control.simulator.recording import SimRequest
from control.simulator.server import DEFAULT_MODELS, Simulator
from control.simulator.text import (
    DEFAULT_WORDS,
    Markers,
    Plan,
    count_words,
    default_reply,
    embedding_vector,
    expected_usage,
    marker_text,
    prompt_text,
    prompt_tokens,
)

__all__ = [
    "ALIASES",
    "CLOSE_IMMEDIATELY",
    "CUT_MIDSTREAM",
    "DEFAULT_MODELS",
    "DEFAULT_WORDS",
    "ERROR_MIDSTREAM",
    "FAULTS",
    "FAULT_HEADER",
    "GARBAGE",
    "NO_USAGE",
    "SLOW_STREAM",
    "STATUS_400",
    "STATUS_429",
    "STATUS_500",
    "TIMEOUT",
    "Markers",
    "Plan",
    "SimRequest",
    "Simulator",
    "UnknownFault",
    "count_words",
    "default_reply",
    "embedding_vector",
    "expected_usage",
    "marker_text",
    "prompt_text",
    "prompt_tokens",
]

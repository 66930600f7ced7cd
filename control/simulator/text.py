"""Deterministic text, token and marker rules of the simulator.

Everything a test needs to predict the simulator's answers lives here:

* **prompt tokens** = ``max(1, words)`` where *words* is :func:`count_words` over every
  piece of prompt text in the request body (see :func:`prompt_tokens`); token-id arrays
  (legacy completions / embeddings) count one token per id.
* **completion tokens** = number of words in the generated text, capped by
  ``max_completion_tokens`` / ``max_tokens`` / ``max_output_tokens`` (the smallest given).
* **generated text** = the ``SIM_REPLY:<text>`` of the marker text if present, else the
  first ``chunks`` words of :data:`DEFAULT_WORDS` (cycled). Each word is one stream chunk.
* **cached tokens** = ``SIM_CACHED:<n>`` if present, else the simulator's ``cached_tokens``,
  never more than the prompt tokens.

Markers (``SIM_REPLY:``, ``SIM_FAULT:``, ``SIM_ERROR_TEXT:``, ``SIM_CACHED:``) are read
from the *marker text*: the last ``user`` message for role-based inputs, otherwise the
last prompt / input string. A marker value runs to the next `` SIM_X:`` marker or the end.
Markers are ordinary words for the token count.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: The default reply cycles through these words.
DEFAULT_WORDS: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
)

_MARKER_RE = re.compile(r"SIM_(REPLY|FAULT|ERROR_TEXT|CACHED):")
_NEXT_MARKER_RE = re.compile(r"\s+SIM_[A-Z_]+:")
_PIECE_RE = re.compile(r"\s*\S+")
_PROMPT_KEYS = ("system", "instructions", "messages", "prompt", "input")
_MAX_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def count_words(text: str) -> int:
    """Number of whitespace-separated words in ``text``: the simulator's token unit."""
    return len(text.split())


def _walk(obj: Any, texts: list[str], ids: list[int], depth: int = 0) -> None:
    """Collect prompt text (and token-id counts) from a JSON value."""
    if depth > 16:
        return
    if isinstance(obj, str):
        texts.append(obj)
    elif isinstance(obj, list):
        if obj and all(isinstance(x, int) and not isinstance(x, bool) for x in obj):
            ids.append(len(obj))
            return
        for item in obj:
            _walk(item, texts, ids, depth + 1)
    elif isinstance(obj, dict):
        for key in ("text", "content", "output"):
            value = obj.get(key)
            if isinstance(value, str | list):
                _walk(value, texts, ids, depth + 1)


def prompt_text(body: Any) -> str:
    """All prompt text of a request body, joined by newlines (system, instructions,
    messages / input items and their text parts, prompt, input)."""
    texts: list[str] = []
    if isinstance(body, dict):
        for key in _PROMPT_KEYS:
            if key in body:
                _walk(body[key], texts, [])
    return "\n".join(texts)


def prompt_tokens(body: Any) -> int:
    """Prompt tokens the simulator reports for a request body: ``max(1, words)``."""
    texts: list[str] = []
    ids: list[int] = []
    if isinstance(body, dict):
        for key in _PROMPT_KEYS:
            if key in body:
                _walk(body[key], texts, ids)
    return max(1, sum(count_words(t) for t in texts) + sum(ids))


def marker_text(body: Any) -> str:
    """The text that ``SIM_*`` markers are read from (see the module docstring)."""
    if not isinstance(body, dict):
        return ""
    for key in ("messages", "input", "prompt"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value:
            users = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
            if users:
                texts: list[str] = []
                _walk(users[-1].get("content"), texts, [])
                return "\n".join(texts)
            strings = [v for v in value if isinstance(v, str)]
            if strings:
                return strings[-1]
    return ""


def _markers(text: str) -> Iterator[tuple[str, str]]:
    for match in _MARKER_RE.finditer(text):
        rest = text[match.end():]
        end = _NEXT_MARKER_RE.search(rest)
        yield match.group(1), (rest[: end.start()] if end else rest).rstrip()


@dataclass(frozen=True)
class Markers:
    """The ``SIM_*`` markers of one request (``None`` when absent; the last one wins)."""

    reply: str | None = None
    fault: str | None = None
    error_text: str | None = None
    cached: int | None = None

    @classmethod
    def parse(cls, text: str) -> Markers:
        """Read the markers from a marker text."""
        found: dict[str, str] = {}
        for name, value in _markers(text):
            found[name] = value
        cached = found.get("CACHED", "").split()
        fault = found.get("FAULT", "").split()
        return cls(
            reply=found.get("REPLY"),
            fault=fault[0] if fault else None,
            error_text=found.get("ERROR_TEXT"),
            cached=int(cached[0]) if cached and cached[0].isdigit() else None,
        )


def split_pieces(text: str) -> list[str]:
    """Split text into stream pieces, one per word, keeping the whitespace before each
    word so that ``"".join(pieces)`` is the text without its leading/trailing space."""
    return _PIECE_RE.findall(text.strip())


def max_output(body: Any) -> int | None:
    """The smallest output cap the request gives, if any."""
    if not isinstance(body, dict):
        return None
    caps = [body[k] for k in _MAX_KEYS
            if isinstance(body.get(k), int) and not isinstance(body.get(k), bool)]
    return max(0, min(caps)) if caps else None


@dataclass(frozen=True)
class Plan:
    """What the simulator answers to one generation request."""

    pieces: tuple[str, ...]
    prompt_tokens: int
    cached_tokens: int
    truncated: bool

    @property
    def text(self) -> str:
        """The generated text."""
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        """Generated tokens (one per word)."""
        return len(self.pieces)

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


def default_reply(words: int) -> str:
    """The default generated text: ``words`` words of :data:`DEFAULT_WORDS`, cycled."""
    return " ".join(DEFAULT_WORDS[i % len(DEFAULT_WORDS)] for i in range(max(0, words)))


def plan(body: Any, markers: Markers, *, chunks: int, cached_tokens: int) -> Plan:
    """Compute the reply and usage for a generation request."""
    text = markers.reply if markers.reply is not None else default_reply(chunks)
    pieces = split_pieces(text)
    cap = max_output(body)
    truncated = cap is not None and len(pieces) > cap
    if truncated:
        pieces = pieces[:cap]
    p_tokens = prompt_tokens(body)
    cached = markers.cached if markers.cached is not None else cached_tokens
    return Plan(tuple(pieces), p_tokens, max(0, min(cached, p_tokens)), truncated)


def expected_usage(body: Any, *, chunks: int = 8, cached_tokens: int = 0) -> Plan:
    """What a simulator with these settings reports for ``body`` (for tests)."""
    return plan(body, Markers.parse(marker_text(body)), chunks=chunks,
                cached_tokens=cached_tokens)


def embedding_vector(text: str, dim: int) -> list[float]:
    """A deterministic embedding: values ``(b - 128) / 128`` from SHA-256 of the text,
    all exactly representable as float32 (so float and base64 forms agree)."""
    out: list[float] = []
    counter = 0
    while len(out) < dim:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out.extend((b - 128) / 128 for b in digest)
        counter += 1
    return out[:dim]

"""Meter: reading usage from provider answers without keeping content.

:class:`StreamTap` is the ``flow.response.stream`` callable of an SSE answer. It forwards
whole SSE events as they complete (a partial event waits for its end, bounded by
``MAX_LINE``; a longer one is passed through unparsed and only counts towards the estimate),
so a stream the provider cuts mid-event still ends on an event boundary before hushgate's
terminal error event. It reads usage on the side and never alters an event, except one:
OpenAI's usage-only chunk (``"choices": []`` with ``usage``), which hushgate asked for by
injecting ``stream_options.include_usage``, is not passed to a client that did not ask.

Non-streamed (JSON) answers are buffered by mitmproxy (bounded by ``body_size_limit``) and
read once by :func:`read_json_body`, so a cut or invalid body can still become a 502.

A tap exception would make mitmproxy drop the chunk: failures are caught, the chunk is
forwarded as is, and the tap is marked ``broken`` (the Gateway charges per its policy).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from proxy_addons.pricing import Usage

MAX_LINE = 256 * 1024
_END_EVENTS = frozenset({"message_stop", "response.completed", "response.failed",
                         "response.incomplete"})
_EVENT_END = re.compile(rb"\r?\n\r?\n")
#: Keys whose string values are generated text (for the estimate when usage is missing).
_TEXT_KEYS = frozenset({"content", "text", "arguments", "partial_json", "refusal", "thinking",
                        "delta"})
#: A text key with a string value, in raw JSON (the value's escapes intact).
_TEXT_VALUE = re.compile(rb'"(?:' + b"|".join(re.escape(k.encode()) for k in sorted(_TEXT_KEYS))
                         + rb')"\s*:\s*"((?:[^"\\]|\\.)*)"')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_obj(obj: Any) -> Usage | None:
    """Usage from a provider JSON object (a body or one SSE event), or None if it has none.

    Handles OpenAI chat/completions/embeddings (``prompt_tokens``...), the Responses API
    (``input_tokens``..., also nested in ``response``) and Anthropic (``message.usage`` in
    ``message_start``, top-level ``usage`` in bodies and ``message_delta``).
    """
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        for outer in ("response", "message"):
            inner = obj.get(outer)
            if isinstance(inner, dict) and isinstance(inner.get("usage"), dict):
                usage = inner["usage"]
                break
        else:
            return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        details = usage.get("prompt_tokens_details") or {}
        return Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")),
                     _int(details.get("cached_tokens")) if isinstance(details, dict) else 0,
                     seen=True)
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage or (
            "input_tokens" in usage and "input_tokens_details" not in usage
            and obj.get("type") in {"message", "message_start", "message_delta", None}):
        # Anthropic: input_tokens excludes cache reads/writes; hushgate's input includes them.
        cached = _int(usage.get("cache_read_input_tokens"))
        created = _int(usage.get("cache_creation_input_tokens"))
        return Usage(_int(usage.get("input_tokens")) + cached + created,
                     _int(usage.get("output_tokens")), cached, seen=True)
    if "input_tokens" in usage or "output_tokens" in usage:
        details = usage.get("input_tokens_details") or {}
        return Usage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")),
                     _int(details.get("cached_tokens")) if isinstance(details, dict) else 0,
                     seen=True)
    return None


def merge_usage(current: Usage, new: Usage, api_format: str) -> Usage:
    """Combine usage reports. Anthropic's ``message_delta`` is cumulative for output and may
    omit input; later reports win field by field when they carry a value."""
    if api_format == "anthropic":
        return Usage(new.input_tokens or current.input_tokens,
                     max(new.output_tokens, current.output_tokens),
                     new.cached_tokens or current.cached_tokens, seen=True)
    return Usage(new.input_tokens or current.input_tokens,
                 new.output_tokens or current.output_tokens,
                 new.cached_tokens or current.cached_tokens, seen=True)


def text_chars(obj: Any, depth: int = 0) -> int:
    """Characters of generated text in a JSON object (for estimates; text is not kept)."""
    if depth > 12:
        return 0
    total = 0
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str):
                if key in _TEXT_KEYS:
                    total += len(value)
            elif isinstance(value, dict | list):
                total += text_chars(value, depth + 1)
    elif isinstance(obj, list):
        for value in obj:
            total += text_chars(value, depth + 1)
    return total


def is_usage_only_chunk(obj: Any) -> bool:
    """OpenAI's extra chunk sent because of ``stream_options.include_usage``."""
    return (isinstance(obj, dict) and obj.get("choices") == []
            and isinstance(obj.get("usage"), dict))


def raw_text_chars(payload: bytes) -> int:
    """:func:`text_chars` of an OpenAI chunk's ``choices``, read from the raw JSON without
    parsing it (the hot path of a stream: most events are one text delta). Exact: a value
    with escapes is decoded before it is counted."""
    total = 0
    for m in _TEXT_VALUE.finditer(payload):
        value = m.group(1)
        if b"\\" in value:
            try:
                total += len(json.loads(b'"' + value + b'"'))
            except ValueError:
                continue
        else:
            total += len(value.decode("utf-8", "replace"))
    return total


def _plain_chunk(payload: bytes) -> bool:
    """An OpenAI chat/completions chunk with nothing but text: no usage object, no event
    ``type`` (Anthropic and Responses events have one), so only its text counts."""
    return (b'"choices"' in payload and b'"type"' not in payload
            and (b'"usage"' not in payload or _USAGE_OBJECT.search(payload) is None))


def _data_payload(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one SSE event."""
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" "))
    return b"\n".join(parts) if parts else None


class StreamTap:
    """The ``flow.response.stream`` callable: forward whole events, count, read usage."""

    __slots__ = ("api_format", "hide_usage_chunk", "usage", "text", "delivered", "events",
                 "_pending", "completed", "broken", "ended", "last_chunk_at")

    def __init__(self, api_format: str, *, hide_usage_chunk: bool = False) -> None:
        self.api_format = api_format
        self.hide_usage_chunk = hide_usage_chunk and api_format == "openai"
        self.usage = Usage()
        self.text = 0  # characters of generated text seen
        self.delivered = 0  # bytes handed to the client
        self.events = 0
        self.completed = False  # saw the end of the message (final b"")
        self.broken = False  # the tap failed: the Gateway charges the hold (policy)
        self.ended = False  # saw the stream's own last event ([DONE], message_stop, ...)
        self.last_chunk_at = time.monotonic()  # for the stream idle deadline
        self._pending = bytearray()

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        """Called by mitmproxy per chunk (and ``b""`` at the end). An empty *list* means
        "send nothing now": an empty bytes chunk would end an HTTP/1.1 chunked body."""
        self.last_chunk_at = time.monotonic()
        try:
            out = self._feed(data)
        except Exception:  # noqa: BLE001 - never drop a chunk because of hushgate
            self.broken = True
            out = bytes(self._pending) + data
            self._pending.clear()
        self.delivered += len(out)
        return out if out else []

    def _feed(self, data: bytes) -> bytes:
        if not data:
            self.completed = True
            rest = bytes(self._pending)
            self._pending.clear()
            if rest.strip():
                self._event(rest)
            return rest
        if self.broken:
            return data
        self._pending += data
        return self._scan()

    def _scan(self) -> bytes:
        """Consume complete events from the pending buffer; return the bytes to forward
        (unchanged, in one piece, unless an event is hidden)."""
        data = bytes(self._pending)
        start = kept = 0
        out = b""
        for m in _EVENT_END.finditer(data):
            end = m.end()
            if not self._event(data[start:end]):
                out += data[kept:start]
                kept = end
            start = end
        out += data[kept:start]
        del self._pending[:start]
        if len(self._pending) > MAX_LINE:
            # An event too long to parse: forward it unparsed (it counts for nothing).
            out += bytes(self._pending)
            self._pending.clear()
        return out

    def _event(self, event: bytes) -> bool:
        """Read one SSE event. Returns False if it must be hidden from the client."""
        if event.startswith(b"data: ") and event.count(b"\n") <= 2 and b"\r" not in event:
            payload: bytes | None = event[6:].rstrip(b"\n").lstrip(b" ")  # one data line
        else:
            payload = _data_payload(event)
        if payload == b"[DONE]":
            self.ended = True
            return True
        if payload is None:
            return True
        self.events += 1
        if _plain_chunk(payload):
            self.text += raw_text_chars(payload)
            return True
        try:
            obj = json.loads(payload)
        except ValueError:
            return True
        self.text += text_chars(_text_part(obj))
        if isinstance(obj, dict) and obj.get("type") in _END_EVENTS:
            self.ended = True
        found = usage_from_obj(obj)
        if found is not None:
            self.usage = merge_usage(self.usage, found, self.api_format)
            if self.hide_usage_chunk and is_usage_only_chunk(obj):
                return False
        return True


def read_json_body(raw: bytes | None) -> tuple[Usage, int] | None:
    """(usage, generated characters) of a complete JSON answer; None if it is not JSON.
    The parsed object is dropped at once: only the numbers leave this function."""
    if not raw:
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    return usage_from_obj(obj) or Usage(), text_chars(_text_part(obj))


def _text_part(obj: Any) -> Any:
    """The part of an event that holds generated text (not the echoed request/metadata)."""
    if not isinstance(obj, dict):
        return None
    if "choices" in obj:
        return obj["choices"]
    if obj.get("type") in ("content_block_delta", "content_block_start"):
        return obj.get("delta") or obj.get("content_block")
    if obj.get("type") == "message":
        return obj.get("content")
    if obj.get("type", "").startswith("response.output_text") or obj.get("type", "").endswith(
            ".delta"):
        return {"delta": obj.get("delta")}
    if "output" in obj:
        return obj["output"]
    return None

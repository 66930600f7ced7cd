"""Reading usage from provider responses on the fly, without keeping content.

:class:`StreamTap` is the ``flow.response.stream`` callable. It forwards every chunk as it
arrives and reads usage on the side with a bounded line buffer (``MAX_LINE`` bytes; a longer
line is passed through unparsed and only counts towards the estimate). It never alters a
chunk. The one exception is OpenAI's usage-only chunk (``"choices": []`` with ``usage``),
which hushgate asked for by injecting ``stream_options.include_usage``: a client that did
not ask for usage doesn't receive it. In that mode the tap forwards whole SSE events only
(a partial event waits for its end, bounded by ``MAX_LINE``).

Non-streaming bodies go through the same tap (``sse=False``): they are forwarded chunk by
chunk and kept only up to ``MAX_JSON`` bytes to parse usage at the end; the buffer is freed
as soon as it is parsed.

Every parse failure is swallowed: a tap exception would make mitmproxy drop the chunk.
"""

from __future__ import annotations

import json
import re
from typing import Any

from proxy_addons.state import Usage

MAX_LINE = 256 * 1024
MAX_JSON = 16 * 1024 * 1024
_END_EVENTS = frozenset({"message_stop", "response.completed", "response.failed",
                         "response.incomplete"})
_EVENT_END = re.compile(rb"\r?\n\r?\n")
#: Keys whose string values are generated text (for the estimate when usage is missing).
_TEXT_KEYS = frozenset({"content", "text", "arguments", "partial_json", "refusal", "thinking",
                        "delta"})


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


def tokens_from_chars(chars: int) -> int:
    """hushgate's documented estimate: about 4 characters per token, rounded up."""
    return -(-chars // 4) if chars > 0 else 0


def is_usage_only_chunk(obj: Any) -> bool:
    """OpenAI's extra chunk sent because of ``stream_options.include_usage``."""
    return (isinstance(obj, dict) and obj.get("choices") == []
            and isinstance(obj.get("usage"), dict))


def _data_payload(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one SSE event."""
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" "))
    return b"\n".join(parts) if parts else None


class StreamTap:
    """The ``flow.response.stream`` callable: forward, count, and read usage on the side."""

    __slots__ = ("api_format", "sse", "hide_usage_chunk", "usage", "text", "delivered",
                 "events", "_pending", "_json", "_json_over", "completed", "broken",
                 "ended")

    def __init__(self, api_format: str, *, sse: bool, hide_usage_chunk: bool = False) -> None:
        self.api_format = api_format
        self.sse = sse
        self.hide_usage_chunk = hide_usage_chunk and sse and api_format == "openai"
        self.usage = Usage()
        self.text = 0  # characters of generated text seen
        self.delivered = 0  # bytes handed to the client
        self.events = 0
        self.completed = False  # saw the end of the message (final b"")
        self.broken = False  # a parse problem: fall back to the estimate
        self.ended = False  # saw the stream's own last event ([DONE], message_stop, ...)
        self._pending = bytearray()
        self._json = bytearray()
        self._json_over = False

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        """Called by mitmproxy per chunk (and ``b""`` at the end). An empty *list* means
        "send nothing now": an empty bytes chunk would end an HTTP/1.1 chunked body."""
        try:
            out = self._feed(data)
        except Exception:  # noqa: BLE001 - never drop a chunk because of hushgate
            self.broken = True
            out = bytes(self._pending) + data if self.hide_usage_chunk else data
            self._pending.clear()
            self.hide_usage_chunk = False
        self.delivered += len(out)
        return out if out else []

    # -- internals ------------------------------------------------------------------------

    def _feed(self, data: bytes) -> bytes:
        if not data:
            self.completed = True
            if not self.sse:
                self._parse_json_body()
                return b""
            rest = bytes(self._pending)
            self._pending.clear()
            if rest.strip():
                self._event(rest)
            return rest if self.hide_usage_chunk else b""
        if not self.sse:
            if not self._json_over:
                if len(self._json) + len(data) > MAX_JSON:
                    self._json_over = True
                    self._json.clear()
                else:
                    self._json += data
            return data
        self._pending += data
        if not self.hide_usage_chunk:
            self._scan(emit=False)
            return data
        return self._scan(emit=True)

    def _scan(self, *, emit: bool) -> bytes:
        """Consume complete events from the pending buffer; return the bytes to forward."""
        out = bytearray()
        buf = self._pending
        start = 0
        for m in _EVENT_END.finditer(buf):
            event = bytes(buf[start:m.end()])
            start = m.end()
            if not self._event(event) and emit:
                continue
            if emit:
                out += event
        del buf[:start]
        if len(buf) > MAX_LINE:
            # An event too long to parse: forward it unparsed and stop hiding anything.
            self.broken = True
            if emit:
                out += buf
            buf.clear()
        return bytes(out)

    def _event(self, event: bytes) -> bool:
        """Read one SSE event. Returns False if it must be hidden from the client."""
        payload = _data_payload(event)
        if payload == b"[DONE]":
            self.ended = True
            return True
        if payload is None:
            return True
        self.events += 1
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

    def _parse_json_body(self) -> None:
        if self._json_over or not self._json:
            self._json.clear()
            return
        try:
            obj = json.loads(bytes(self._json))
        except ValueError:
            obj = None
        finally:
            self._json.clear()  # the body is dropped as soon as it is metered
        if obj is None:
            return
        self.text += text_chars(_text_part(obj))
        found = usage_from_obj(obj)
        if found is not None:
            self.usage = found


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

"""HTTP/1.1 on asyncio streams with h11, with the byte-level control faults need.

:class:`Wire` reads requests and writes :class:`Reply` objects on one keep-alive
connection. A reply is either a whole body (``Content-Length``) or a list of SSE frames
(chunked); either can be cut short, which closes the socket without the end of the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
MAX_BODY = 32 * 1024 * 1024
_READ_SIZE = 65536


def dumps(obj: Any) -> bytes:
    """Compact JSON, as providers send it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def phrase(status: int, default: str = "Error") -> str:
    """The standard reason phrase of an HTTP status."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return default


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event: optional ``event:`` line, one ``data:`` line, blank line."""
    payload = data if isinstance(data, bytes) else (
        data.encode() if isinstance(data, str) else dumps(data))
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"


@dataclass
class Reply:
    """One HTTP answer: a whole ``body``, or SSE ``frames`` when not ``None``."""

    status: int = 200
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: list[tuple[str, str]] = field(default_factory=list)
    frames: list[bytes] | None = None

    @classmethod
    def json(cls, obj: Any, status: int = 200,
             headers: list[tuple[str, str]] | None = None) -> Reply:
        """A JSON reply."""
        return cls(status=status, body=dumps(obj), headers=list(headers or []))

    @classmethod
    def stream(cls, frames: list[bytes], headers: list[tuple[str, str]] | None = None) -> Reply:
        """A 200 SSE reply."""
        return cls(content_type=SSE_TYPE, frames=frames, headers=list(headers or []))


@dataclass
class Incoming:
    """One request as read from the wire."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class ClientGone(Exception):
    """The client closed the connection."""


class Wire:
    """One server-side HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER)

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.conn.they_are_waiting_for_100_continue:
                self.writer.write(self.conn.send(
                    h11.InformationalResponse(status_code=100, headers=[])))
            data = await self.reader.read(_READ_SIZE)
            self.conn.receive_data(data)

    async def read_request(self) -> Incoming | None:
        """The next request, or ``None`` when the client closed between requests.

        Raises ``h11.RemoteProtocolError`` on a malformed request (see :meth:`reject`).
        """
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError("expected a request", error_status_hint=400)
        chunks: list[bytes] = []
        size = 0
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                size += len(part.data)
                if size > MAX_BODY:
                    raise h11.RemoteProtocolError("body too large", error_status_hint=413)
                chunks.append(bytes(part.data))
            elif isinstance(part, h11.EndOfMessage):
                break
            else:  # ConnectionClosed mid-body
                raise ClientGone()
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers]
        return Incoming(event.method.decode("latin-1"), event.target.decode("latin-1"),
                        headers, b"".join(chunks))

    def _head(self, reply: Reply, length: int | None) -> bytes:
        headers = [("content-type", reply.content_type), ("server", "hushgate-simulator"),
                   *reply.headers]
        if reply.frames is not None:
            headers.append(("cache-control", "no-cache"))
        if length is not None:
            headers.append(("content-length", str(length)))
        return self.conn.send(h11.Response(status_code=reply.status, headers=headers,
                                           reason=phrase(reply.status, "")))

    async def send(self, reply: Reply, *, chunk_delay: float = 0.0,
                   cut: bool = False) -> None:
        """Write a reply. With ``cut``, write part of it and close the socket."""
        if reply.frames is None:
            self.writer.write(self._head(reply, len(reply.body)))
            body = reply.body[: len(reply.body) // 2] if cut else reply.body
            self.writer.write(self.conn.send(h11.Data(data=body)))
            if cut:
                await self.abort()
                return
            self.writer.write(self.conn.send(h11.EndOfMessage()))
            await self.writer.drain()
            return
        self.writer.write(self._head(reply, None))
        await self.writer.drain()
        frames = reply.frames[: max(1, len(reply.frames) // 2)] if cut else reply.frames
        for i, frame in enumerate(frames):
            if i and chunk_delay > 0:
                await asyncio.sleep(chunk_delay)
            self.writer.write(self.conn.send(h11.Data(data=frame)))
            await self.writer.drain()
        if cut:
            await self.abort()
            return
        self.writer.write(self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()

    async def reject(self, error: h11.RemoteProtocolError, reply: Reply) -> None:
        """Answer a malformed request (if still possible) and close."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            reply.status = error.error_status_hint
            reply.headers.append(("connection", "close"))
            with contextlib.suppress(h11.LocalProtocolError):
                self.writer.write(self._head(reply, len(reply.body)))
                self.writer.write(self.conn.send(h11.Data(data=reply.body)))
                self.writer.write(self.conn.send(h11.EndOfMessage()))
                await self.writer.drain()
        await self.abort()

    async def wait_for_client_close(self) -> None:
        """Say nothing until the client closes its side (the ``timeout`` fault)."""
        while await self.reader.read(_READ_SIZE):
            pass

    def keep_alive(self) -> bool:
        """Start the next request cycle if the connection can be reused."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

    async def abort(self) -> None:
        """Flush what was written, then close the socket (no more bytes, no end of body)."""
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()
        await self.close()

    async def close(self) -> None:
        """Close the socket and wait for it to be closed."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

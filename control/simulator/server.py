"""The :class:`Simulator`: an HTTP/1.1 server speaking the OpenAI and Anthropic formats.

It runs either in a background thread with its own event loop (``start()`` / ``stop()``,
for sync test fixtures and ``hushgate up``), or in the caller's loop (``await serve()``),
or in the foreground (``run_forever()``, the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterable
from types import TracebackType

import h11

from control.core.net import is_loopback
from control.simulator import faults, openai_format
from control.simulator.handling import respond
from control.simulator.recording import RequestLog, SimRequest
from control.simulator.wire import ClientGone, Wire

log = logging.getLogger("control.simulator")

DEFAULT_MODELS: tuple[str, ...] = ("sim-gpt", "sim-embed", "sim-claude")


class Simulator:
    """A fake LLM provider on loopback.

    Args:
        host: loopback address to bind (anything else is refused).
        port: port to bind; 0 picks a free one (read ``.port`` after ``start()``).
        latency_ms: delay before every answer's first byte.
        chunk_delay_ms: delay between SSE frames.
        chunks: words in the default reply (each one stream chunk).
        cached_tokens: cached prompt tokens reported (capped at the prompt tokens).
        embedding_dim: embedding length when the request gives no ``dimensions``.
        require_key: if set, answer 401 unless the request carries this key
            (``Authorization: Bearer`` for OpenAI paths; ``x-api-key`` or Bearer for
            Anthropic paths).
        slow_chunk_delay_ms: delay between SSE frames under the ``slow_stream`` fault.
        models: ids listed by ``GET /v1/models``.
        max_recorded: how many requests ``.requests`` keeps (oldest dropped).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency_ms: int = 0,
                 chunk_delay_ms: int = 0, chunks: int = 8, cached_tokens: int = 0,
                 embedding_dim: int = 8, require_key: str | None = None,
                 slow_chunk_delay_ms: int = 200, models: Iterable[str] = DEFAULT_MODELS,
                 max_recorded: int | None = 10_000) -> None:
        if not is_loopback(host):
            raise ValueError(f"the simulator binds loopback only, not {host!r}")
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.chunks = chunks
        self.cached_tokens = cached_tokens
        self.embedding_dim = embedding_dim
        self.require_key = require_key
        self.slow_chunk_delay_ms = slow_chunk_delay_ms
        self.models = tuple(models)
        self.request_log = RequestLog(max_recorded)
        self.fault_switch = faults.FaultSwitch()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = False  # a signal came before serve() was listening
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # --- what tests use -------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` (no ``/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def requests(self) -> list[SimRequest]:
        """A copy of the requests received so far, oldest first."""
        return self.request_log.snapshot()

    def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> list[SimRequest]:
        """Wait until ``count`` requests arrived (or ``timeout`` seconds); return them."""
        return self.request_log.wait_for(count, timeout)

    def set_fault(self, name: str, times: int | None = None) -> None:
        """Apply a fault to every following request, or to the next ``times`` ones.
        A ``x-sim-fault`` header or a ``SIM_FAULT:`` marker still takes precedence."""
        self.fault_switch.set(name, times)

    def clear_fault(self) -> None:
        """Stop applying the server-wide fault."""
        self.fault_switch.clear()

    def reset(self) -> None:
        """Forget the recorded requests and clear the server-wide fault."""
        self.request_log.clear()
        self.fault_switch.clear()

    # --- running ----------------------------------------------------------------------

    async def serve(self) -> None:
        """Serve in the running event loop until :meth:`stop` (or cancellation)."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()  # a signal arrived before the listener was up
        self._server = await asyncio.start_server(self._connection, self.host, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("simulator listening on %s", self.base_url)
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self._shutdown()

    def start(self) -> Simulator:
        """Serve in a background thread with its own event loop; returns once listening."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._thread_main, name="hushgate-simulator",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            thread, self._thread = self._thread, None
            thread.join(5)
            raise RuntimeError("the simulator did not start") from self._error
        return self

    def stop(self) -> None:
        """Stop serving: close the listener and every connection (idempotent)."""
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(event.set)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)

    def run_forever(self) -> None:
        """Serve in the foreground until SIGINT or SIGTERM (the CLI)."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            # Both signals explicitly: a process started with SIGINT ignored (a shell's
            # ``trap '' INT``, a background job) must still stop on either.
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, ValueError):
                    loop.add_signal_handler(sig, self._stop_soon)
            await self.serve()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    def _stop_soon(self) -> None:
        """Signal handler (in the loop): stop now, or as soon as :meth:`serve` is ready."""
        self._stop_requested = True
        if self._stop_event is not None:
            self._stop_event.set()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- internals ----------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._loop = None
        log.info("simulator stopped")

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        wire = Wire(reader, writer)
        try:
            while True:
                try:
                    incoming = await wire.read_request()
                except h11.RemoteProtocolError as exc:
                    await wire.reject(exc, openai_format.error(400, "Invalid HTTP request"))
                    return
                if incoming is None or not await respond(self, wire, incoming):
                    return
                if not wire.keep_alive():
                    return
        except (ClientGone, ConnectionError, OSError):
            log.debug("client went away")
        except asyncio.CancelledError:
            # stop() cancels open connections; ending quietly keeps asyncio's stream
            # callback from logging the cancellation as an error.
            log.debug("connection closed by shutdown")
        except Exception:
            log.exception("simulator connection failed")
        finally:
            self._tasks.discard(task)
            await wire.close()

"""``hushgate proxy --workers N``: N proxy processes on one listening address.

Each worker is a whole hushgate proxy (its own mitmproxy master, event loop, database pool,
balance leases, outcome journal and registered instance); the kernel spreads connections
across them with ``SO_REUSEPORT`` (Linux: every socket bound to the address with the option
set gets its share of new connections). mitmproxy 12 has no option for it, so
:func:`listen_with_reuse_port` sets it on the one call mitmproxy makes to open its TCP
listeners (``asyncio.start_server`` in ``mitmproxy.proxy.mode_servers``), in the worker
process only.

:class:`WorkerPool` is the supervisor (a run_services ``Service``): it reserves the port (a
bound, never listening ``SO_REUSEPORT`` socket, so port 0 works and nobody else takes it),
starts the workers (``python -m proxy_addons.workers``), waits until each listens, restarts
one that dies (its replacement takes over the dead one's journal by its lock, and the dead
instance's holds are swept after its heartbeat stops), and on stop sends SIGTERM to each and
waits for their graceful shutdown (outcomes committed, leases returned, deregistered). A
worker stops by itself when its supervisor is gone (its stdin pipe reaches EOF).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import types

log = logging.getLogger("hushgate.proxy")
READY = b"hushgate-worker-ready\n"


def listen_with_reuse_port() -> None:
    """Make mitmproxy's TCP listeners of this process bind with ``SO_REUSEPORT``."""
    from mitmproxy.proxy import mode_servers

    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("SO_REUSEPORT is not available on this system: run one worker per "
                      "port behind a load balancer instead")
    shim = types.SimpleNamespace(**{k: getattr(asyncio, k) for k in dir(asyncio)
                                    if not k.startswith("__")})
    shim.start_server = functools.partial(asyncio.start_server, reuse_port=True)
    mode_servers.asyncio = shim  # type: ignore[attr-defined]


class WorkerPool:
    """N ``hushgate proxy`` worker processes on one address (see the module docstring)."""

    def __init__(self, workers: int, *, config_path: str | None, host: str, port: int,
                 start_timeout: float = 90.0) -> None:
        self.workers = workers
        self.host = host
        self._config_path = config_path
        self._timeout = start_timeout
        self._reserve = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._reserve.bind((host, port))
        self.port = self._reserve.getsockname()[1]
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * workers
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self.restarts = 0

    def describe(self) -> str:
        return f"{self.workers} workers listening on {self.host}:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None]

    def start(self) -> WorkerPool:
        try:
            for i in range(self.workers):
                self._procs[i] = self._spawn(i)
            for i in range(self.workers):
                self._wait_ready(i)
        except BaseException:
            self.stop()
            raise
        self._monitor = threading.Thread(target=self._watch, name="hushgate-workers",
                                         daemon=True)
        self._monitor.start()
        return self

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "proxy_addons.workers", "--host", self.host,
                "--port", str(self.port), "--index", str(index)]
        if self._config_path:
            args += ["--config", self._config_path]
        return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _wait_ready(self, index: int) -> None:
        proc = self._procs[index]
        assert proc is not None and proc.stdout is not None
        line = proc.stdout.readline()  # the worker prints READY once it listens
        if line != READY:
            proc.wait(self._timeout)
            from control.core.errors import ConfigError

            raise ConfigError(f"proxy worker {index} did not start (exit code "
                              f"{proc.returncode}); see its messages above")

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            for i, proc in enumerate(self._procs):
                if proc is None or proc.poll() is None or self._stopping.is_set():
                    continue
                log.error("hushgate: proxy worker %d exited (%s); starting a replacement",
                          i, proc.returncode)
                self._close(proc)
                self.restarts += 1
                try:
                    self._procs[i] = self._spawn(i)
                    self._wait_ready(i)
                except Exception as exc:  # noqa: BLE001 - retried on the next round
                    log.error("hushgate: proxy worker %d failed to restart (%s)", i,
                              type(exc).__name__)
                    time.sleep(1)

    @staticmethod
    def _close(proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def stop(self) -> int:
        """SIGTERM every worker and wait for it; returns the worst exit code."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join(30)
        worst = 0
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            if proc is None:
                continue
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            self._close(proc)
            worst = worst or code
        self._reserve.close()
        return worst


def worker_main(argv: list[str] | None = None) -> int:
    """One worker: load the configuration, serve on the shared address, stop on SIGTERM,
    SIGINT or the supervisor's end (EOF on stdin)."""
    parser = argparse.ArgumentParser(prog="hushgate-proxy-worker")
    parser.add_argument("--config")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)

    from control.core.config import load_config
    from control.core.errors import HushgateError
    from control.core.metrics import ProxyMetrics
    from proxy_addons.runner import ProxyServer

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def orphaned() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        stop.set()

    try:
        listen_with_reuse_port()
        config = load_config(args.config)
        if not (config.raw.get("metrics") or {}).get("multiprocess_dir"):
            # N workers behind one address: a scrape reaches any one of them, so they
            # share one multi-process registry and each serves the sum.
            config = load_config(args.config, {"metrics": {"multiprocess_dir": "metrics"}})
        server = ProxyServer(config, listen_host=args.host, listen_port=args.port,
                             observer=ProxyMetrics.from_config(config)).start()
    except (HushgateError, OSError) as exc:
        print(f"hushgate proxy worker {args.index}: {exc}", file=sys.stderr)
        return 1
    try:
        sys.stdout.buffer.write(READY)
        sys.stdout.buffer.flush()
        threading.Thread(target=orphaned, name="hushgate-orphan", daemon=True).start()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())

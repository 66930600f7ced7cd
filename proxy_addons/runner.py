"""Run the hushgate proxy: a mitmproxy ``Master`` in reverse mode with the Gateway.

``ProxyServer(config).start()`` runs it on a background thread with its own event loop
(tests, benchmarks and ``hushgate up``); ``stop()`` shuts mitmproxy down, commits the
outcomes still queued, returns the balance leases and deregisters the process.
``hushgate proxy`` runs the same thing in the foreground (``--workers N``: N processes,
see ``proxy_addons.workers``).

Listener: TLS with ``proxy.tls.cert_file``/``key_file`` when set (mitmproxy's ``certs``);
plain HTTP is accepted only from loopback clients unless ``proxy.allow_plain_http`` is true,
and a non-loopback listener without a certificate refuses to start. Upstream TLS is always
verified (``ssl_insecure`` is off); providers' ``ca_file`` are added to the trusted bundle.

The master carries only the mitmproxy addons a reverse proxy needs (:func:`core_addons`),
not ``mitmdump``'s 34: mitmproxy offers every hook of every flow to every addon, so each
unused one (playback, map-local, modify-body, save, HAR export, scripts, onboarding, ...)
cost CPU on every request, and each was a feature that could read or write content. Their
options don't exist here, so nothing can turn them on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from mitmproxy import options

with warnings.catch_warnings():
    # mitmproxy's proxyauth imports ldap3, which uses a deprecated pyasn1 name at import time.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.addons import (
        core,
        disable_h2c,
        dns_resolver,
        errorcheck,
        next_layer,
        proxyserver,
        tlsconfig,
    )
    from mitmproxy.master import Master

from control.core.config import Config
from control.core.db import Database
from control.core.errors import ConfigError
from control.core.net import is_loopback
from proxy_addons import errorpage
from proxy_addons.gateway import Gateway
from proxy_addons.safety import SAFE_OPTIONS, Safety, install_logging
from proxy_addons.services import Services, build_services

#: The reverse-mode target mitmproxy needs (a reverse listener must name one); every
#: forwarded flow is re-pointed by the forward stage, so nothing is ever sent here (port 9
#: is "discard", refused on loopback).
PLACEHOLDER_UPSTREAM = "http://127.0.0.1:9"


def core_addons() -> list[Any]:
    """The mitmproxy addons hushgate runs (in mitmproxy's default order): options and flow
    commands, h2c upgrades refused, name resolution, the protocol layers, the listeners,
    TLS, and start-up errors reported."""
    return [core.Core(), disable_h2c.DisableH2C(), proxyserver.Proxyserver(),
            dns_resolver.DnsResolver(), next_layer.NextLayer(), tlsconfig.TlsConfig(),
            errorcheck.ErrorCheck()]


#: Variables that make mitmproxy (or OpenSSL users) write TLS session secrets to a file.
KEYLOG_VARIABLES = ("MITMPROXY_SSLKEYLOGFILE", "SSLKEYLOGFILE")


def refuse_key_logging(environ: dict[str, str] | None = None) -> None:
    """Refuse to start when TLS session secrets would be written to a file: with a packet
    capture they expose every key and prompt."""
    env = os.environ if environ is None else environ
    for name in KEYLOG_VARIABLES:
        if env.get(name):
            raise ConfigError(f"refusing to start: {name} is set, which would write TLS "
                              "session secrets to a file; unset it")


def _private_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def mitmproxy_options(config: Config, *, listen_host: str | None = None,
                      listen_port: int | None = None) -> dict[str, Any]:
    """All mitmproxy options hushgate runs with (safe defaults + listener + limits)."""
    refuse_key_logging()
    proxy = config.proxy
    host = listen_host if listen_host is not None else proxy["listen_host"]
    port = listen_port if listen_port is not None else proxy["listen_port"]
    tls = proxy.get("tls") or {}
    has_cert = bool(tls.get("cert_file") and tls.get("key_file"))
    if not has_cert and not is_loopback(host) and not proxy["allow_plain_http"]:
        raise ConfigError("proxy.listen_host is not loopback: configure proxy.tls.cert_file "
                              "and key_file, or set proxy.allow_plain_http: true")
    confdir = config.data_dir / "mitmproxy"
    confdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    opts: dict[str, Any] = dict(SAFE_OPTIONS)
    opts.update({
        "mode": [f"reverse:{PLACEHOLDER_UPSTREAM}"],
        "listen_host": host,
        "listen_port": port,
        "confdir": str(confdir),
        "body_size_limit": str(proxy["max_request_bytes"]),
        # Idle connections close after the longest provider deadline (+ a margin for the
        # forward stage's watchdog, which answers first).
        "tcp_timeout": math.ceil(max(proxy["upstream_timeout_ms"],
                                     proxy["stream_idle_timeout_ms"]) / 1000) + 5,
    })
    if tls.get("cert_file") and tls.get("key_file"):
        try:
            pem = Path(tls["cert_file"]).read_bytes() + b"\n" + Path(tls["key_file"]).read_bytes()
        except OSError as exc:
            raise ConfigError(f"proxy.tls: cannot read certificate or key ({exc.strerror})") \
                from None
        opts["certs"] = [f"*={_private_file(confdir / 'listener.pem', pem)}"]
    cas = [p.ca_file for p in config.providers.values() if p.ca_file]
    if cas:
        import certifi

        bundle = Path(certifi.where()).read_bytes()
        for ca in cas:
            try:
                bundle += b"\n" + Path(ca).read_bytes()
            except OSError as exc:
                raise ConfigError(f"providers: cannot read ca_file ({exc.strerror})") from None
        opts["ssl_verify_upstream_trusted_ca"] = str(
            _private_file(confdir / "upstream-ca.pem", bundle))
    return opts


class _Ready:
    """Learns the bound address once mitmproxy is running."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    def running(self) -> None:
        from mitmproxy import ctx

        addrs = ctx.master.addons.get("proxyserver").listen_addrs()
        if addrs:
            self.server.host, self.server.port = addrs[0][0], addrs[0][1]
        self.server._ready.set()


class ProxyServer:
    """The proxy on a background thread: ``start()``, ``.port``, ``drain()``, ``stop()``."""

    def __init__(self, config: Config, db: Database | None = None, *,
                 listen_host: str | None = None, listen_port: int | None = None,
                 log: bool = True, observer: Any = None) -> None:
        self.config = config
        self._db = db
        # The metrics seam: an object with proxy_addons.observer.NullObserver's methods
        # (and optionally render() for GET /metrics). None: the NullObserver.
        self.observer = observer
        self._opts = mitmproxy_options(config, listen_host=listen_host,
                                       listen_port=listen_port)
        self._log = log
        self.host: str | None = None
        self.port: int | None = None
        self.services: Services | None = None
        self._master: Master | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ProxyServer:
        if self._log:
            install_logging()
        errorpage.install()  # mitmproxy's own error answers become hushgate JSON
        self.services = build_services(self.config, self._db, observer=self.observer)
        self.services.start()
        self._thread = threading.Thread(target=self._run, name="hushgate-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None or self.port is None:
            self.stop()
            raise RuntimeError("the hushgate proxy did not start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    async def _main(self) -> None:
        assert self.services is not None
        opts = options.Options()
        master = Master(opts, with_termlog=False)
        master.addons.add(*core_addons())
        opts.update(**{k: v for k, v in self._opts.items() if k in opts})
        tls = bool(self._opts.get("certs"))
        master.addons.add(Safety(tls=tls), Gateway(self.services), _Ready(self))
        self._master, self._loop = master, asyncio.get_running_loop()
        try:
            await master.run()
        finally:
            # mitmproxy leaves its listeners and client connections open after shutdown.
            await master.addons.get("proxyserver").servers.update([])
            asyncio.get_running_loop().set_exception_handler(lambda _loop, _ctx: None)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every request in flight has finished and is charged and recorded
        (a finished request is durable before its answer ends; this also waits for the
        journal's outcomes to reach the database)."""
        if self.services is None:
            return True
        deadline = time.monotonic() + timeout
        while self.services.in_flight > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return self.services.money.committer.drain(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop listening, then flush the records (graceful shutdown)."""
        if self._master is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._master.shutdown)
        if self._thread is not None:
            self._thread.join(30)
        if self.services is not None:
            self.services.close()
            self.services = None

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Serving the control plane on cheroot (CherryPy's production WSGI server).

With ``control.tls.cert_file`` and ``key_file`` set, the listener speaks HTTPS only (any
address is allowed) and the session cookie is always marked Secure. Without them it speaks
plain HTTP, which is allowed on loopback only, unless ``control.allow_plain_http: true``
confirms that a TLS-terminating reverse proxy sits in front (then set
``control.secure_cookies: true`` too, so the session cookie is marked Secure).

Hardening that does not depend on the app:

- the request body is capped just above the app's ``MAX_CONTENT_LENGTH`` (so the app still
  answers its own 413), and the request line + headers at 256 KiB;
- ``Forwarded``/``X-Forwarded-*``/``X-Real-IP`` are removed before the app sees them (no
  proxy is trusted) and ``wsgi.url_scheme`` is the listener's own;
- a new connection takes a worker thread only once the client has sent something, and the
  TLS handshake runs in that worker, not in cheroot's single accept loop (where one silent
  client would stall every new connection);
- cheroot's error log keeps only the exception type: no request data, client addresses or
  tracebacks.

Some of this reaches into cheroot's (documented but overridable) internals:
``HTTPServer.process_conn``/``error_log``/``bind_socket``, ``ConnectionClass`` and the SSL
adapter's ``wrap``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cheroot import errors as cheroot_errors
from cheroot import wsgi
from cheroot.server import HTTPConnection
from cheroot.ssl.builtin import BuiltinSSLAdapter

from control.core.config import Config
from control.core.db import Database
from control.core.errors import ConfigError
from control.core.files import set_private_umask
from control.web import create_app
from control.web.ext import is_loopback, resolve_secure_cookies

log = logging.getLogger("hushgate.control")

#: The request line and headers together.
MAX_HEADER_BYTES = 256 * 1024
#: Room above the app's MAX_CONTENT_LENGTH, so a body just over the limit still gets the
#: app's own 413 answer (an HTML page, or JSON under /api/); cheroot refuses anything larger.
BODY_MARGIN_BYTES = 64 * 1024
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

#: Client-controlled headers that claim another client address, host or scheme.
_PROXY_HEADER_KEYS = frozenset({"HTTP_FORWARDED", "HTTP_X_REAL_IP"})
_PROXY_HEADER_PREFIX = "HTTP_X_FORWARDED_"


def tls_files(config: Config) -> tuple[str, str] | None:
    """``(cert_file, key_file)`` from ``control.tls``, or None when TLS is off."""
    tls = config.control.get("tls") or {}
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert and not key:
        return None
    if not (cert and key):
        raise ConfigError("control.tls: set both cert_file and key_file (or neither, for "
                          "plain HTTP)")
    return str(cert), str(key)


def check_listen(config: Config, host: str) -> None:
    """Refuse configurations that would expose sign-in over plain HTTP."""
    if tls_files(config) is not None:
        return  # HTTPS: any address
    if not is_loopback(host) and not config.control.get("allow_plain_http"):
        raise ConfigError(
            f"control.listen_host {host!r} is not loopback and control.tls is not set: "
            "configure control.tls.cert_file and key_file to serve HTTPS, or put a "
            "TLS-terminating reverse proxy in front and set control.allow_plain_http: true "
            "(and control.secure_cookies: true)")


def guard_environ(app: Callable[..., Iterable[bytes]], *,
                  scheme: str) -> Callable[..., Iterable[bytes]]:
    """Drop what a client could claim about the connection before the app sees it.

    Proxy headers are removed (no proxy is trusted), and ``wsgi.url_scheme`` is the
    listener's own scheme (cheroot takes it from an absolute-form request line otherwise).
    """

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        for key in [k for k in environ
                    if k in _PROXY_HEADER_KEYS or k.startswith(_PROXY_HEADER_PREFIX)]:
            del environ[key]
        environ["wsgi.url_scheme"] = scheme
        return app(environ, start_response)

    return wsgi_app


class _TLSAdapter(BuiltinSSLAdapter):
    """cheroot's builtin adapter, but without the handshake in the accept loop.

    cheroot completes the handshake while accepting, in its one accept thread, so a client
    that connects and sends nothing stalls every new connection for ``timeout`` seconds.
    Here the socket is only wrapped; ``_TLSConnection`` completes the handshake in a worker
    thread.
    """

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, str]]:
        try:
            tls = self.context.wrap_socket(sock, server_side=True,
                                           do_handshake_on_connect=False)
        except OSError as exc:
            raise cheroot_errors.FatalSSLAlert(*exc.args) from exc
        return tls, {"HTTPS": "on"}


_PLAIN_HTTP_TEXT = b"This server only speaks HTTPS on this port.\n"
#: What a plain-HTTP request on the TLS port gets (like cheroot's own answer).
_PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(_PLAIN_HTTP_TEXT), _PLAIN_HTTP_TEXT))


class _TLSConnection(HTTPConnection):
    """A connection that completes its TLS handshake on first use, in a worker thread
    (once the client has sent something, see ``_Server.process_conn``)."""

    _handshake_done = False

    def communicate(self) -> bool:
        if not self._handshake_done and isinstance(self.socket, ssl.SSLSocket):
            try:
                self.socket.do_handshake()
            except ssl.SSLError as exc:
                self.server.error_log("TLS handshake failed")
                if "http request" in str(exc).lower():  # plain HTTP on the TLS port
                    with contextlib.suppress(OSError):
                        # The raw socket: the TLS layer has nothing to send with.
                        socket.socket.sendall(self.socket, _PLAIN_HTTP_ANSWER)
                return False
            except OSError:  # timed out, reset, ...
                self.server.error_log("TLS handshake failed")
                return False
            self._handshake_done = True
        return bool(super().communicate())


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # Called by OpenSSL only for an encrypted key: fail instead of prompting on the terminal.
    raise _EncryptedKey


def ssl_adapter(config: Config) -> _TLSAdapter | None:
    """The TLS adapter for ``control.tls``, or None; a ConfigError if the files are unusable."""
    files = tls_files(config)
    if files is None:
        return None
    cert, key = files
    for name, path in (("cert_file", cert), ("key_file", key)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"control.tls.{name}: cannot read {path!r} "
                              f"({exc.strerror or type(exc).__name__})") from None
    try:
        adapter = _TLSAdapter(cert, key, private_key_password=_no_password)
    except _EncryptedKey:
        raise ConfigError("control.tls.key_file: the private key is encrypted; hushgate needs "
                          "an unencrypted key file (readable by its user only)") from None
    except ssl.SSLError as exc:
        reason = exc.reason or exc.library or "SSL error"
        raise ConfigError(f"control.tls: cert_file and key_file are not a PEM certificate "
                          f"and its matching private key ({reason})") from None
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    return adapter


class _Server(wsgi.Server):
    @staticmethod
    def bind_socket(socket_: socket.socket, bind_addr: Any) -> socket.socket:
        try:
            socket_.bind(bind_addr)
        except OSError:
            socket_.close()  # cheroot would leave it to the garbage collector
            raise
        return socket_

    def process_conn(self, conn: HTTPConnection) -> None:
        if conn.last_used is None:
            # A new connection waits in the selector until the client sends something (and
            # is closed after ``timeout`` if it never does), instead of holding a worker
            # thread from the start: idle connections can't use up the pool.
            self._connections.put(conn)
            return
        super().process_conn(conn)

    def error_log(self, msg: str = "", level: int = logging.INFO,
                  traceback: bool = False) -> None:
        # cheroot's messages can carry client addresses, request data (in exception reprs)
        # and tracebacks: keep only the exception type.
        exc = sys.exc_info()[1]
        if exc is not None:
            log.log(level, "control plane connection: %s", type(exc).__name__)
        else:
            log.log(level, "control plane server event (details withheld)")


class ControlServer:
    """The control plane on a cheroot server in a background thread.

    ``ControlServer(config).start()`` binds (port 0 picks a free port, see ``.port``) and
    serves HTTPS when ``control.tls`` is set; ``stop()`` closes the listener and the
    connections and waits for the thread.
    """

    def __init__(self, config: Config, *, host: str | None = None, port: int | None = None,
                 db: Database | None = None, threads: int = 8) -> None:
        self.config = config
        self.host = host if host is not None else config.control["listen_host"]
        self._port = port if port is not None else config.control["listen_port"]
        self._db = db
        self._threads = threads
        self._tls = tls_files(config) is not None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app: Any = None

    @property
    def port(self) -> int:
        if self._server is None:
            return int(self._port)
        return int(self._server.bind_addr[1])

    @property
    def scheme(self) -> str:
        return "https" if self._tls else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def describe(self) -> str:
        return (f"admin UI {self.url}/admin/ · portal /portal/ · "
                f"API /api/v1 · policy /policy")

    def start(self) -> ControlServer:
        set_private_umask()  # before the server creates anything (sessions, WAL, head file)
        check_listen(self.config, self.host)
        adapter = ssl_adapter(self.config)
        if os.environ.get("LISTEN_PID"):
            # cheroot would then serve whatever file descriptor 3 is, not control.listen_host.
            raise ConfigError("LISTEN_PID is set, but hushgate does not support systemd socket "
                              "activation: unset it so the control plane binds "
                              "control.listen_host itself")
        self.app = create_app(self.config, self._db)
        hg = self.app.extensions["hushgate"]
        hg.secure_cookies = resolve_secure_cookies(self.config.control, self.host)
        server = _Server((self.host, self._port), guard_environ(self.app, scheme=self.scheme),
                         numthreads=self._threads, max=self._threads, server_name="hushgate")
        server.software = "hushgate"
        if adapter is not None:
            server.ssl_adapter = adapter
            server.ConnectionClass = _TLSConnection
        limit = self.app.config.get("MAX_CONTENT_LENGTH") or DEFAULT_MAX_BODY_BYTES
        server.max_request_body_size = int(limit) + BODY_MARGIN_BYTES
        server.max_request_header_size = MAX_HEADER_BYTES
        try:
            server.prepare()  # binds and listens here, so errors reach the caller
        except BaseException as exc:
            with contextlib.suppress(Exception):
                server.stop()
            self._close_db()
            if isinstance(exc, OSError):
                # cheroot folds the bind errors into one message; keep the OS's reason.
                reasons = re.findall(r"\[Errno \d+\] ([^)]+)", str(exc))
                reason = exc.strerror or (reasons[-1] if reasons else type(exc).__name__)
                raise ConfigError(f"control.listen_host/listen_port: cannot listen on "
                                  f"{self.host}:{self._port} ({reason})") from None
            raise
        self._server = server
        self._thread = threading.Thread(target=self._run, name="hushgate-control",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._server.serve()
        except Exception as exc:  # the thread must not print a traceback
            log.error("control plane server stopped: %s", type(exc).__name__)

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._port = self.port
        server.stop()  # closes the listener and connections, waits for the workers
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._server = None
        self._close_db()

    def _close_db(self) -> None:
        if self.app is not None:
            hg = self.app.extensions["hushgate"]
            if hg.owns_db:
                hg.db.dispose()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

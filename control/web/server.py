"""Serving the control plane on waitress (a production WSGI server).

waitress speaks plain HTTP only. hushgate therefore serves the control plane on loopback by
default, and refuses a non-loopback address unless ``control.allow_plain_http`` says a TLS
terminator (a reverse proxy) sits in front. ``control.tls`` cert/key are not terminated
here: set them empty and terminate TLS in the reverse proxy, with
``control.secure_cookies: true`` so the session cookie is marked Secure.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from waitress.server import create_server

from control.core.config import Config
from control.core.db import Database
from control.core.errors import ConfigError
from control.web import create_app
from control.web.ext import is_loopback


def check_listen(config: Config, host: str) -> None:
    """Refuse configurations that would expose sign-in over plain HTTP."""
    c = config.control
    tls = c.get("tls") or {}
    if tls.get("cert_file") or tls.get("key_file"):
        raise ConfigError(
            "control.tls: waitress does not terminate TLS. Leave control.tls empty, terminate "
            "TLS in a reverse proxy in front of the control plane and set "
            "control.secure_cookies: true (see the README, 'Serving the control plane')")
    if not is_loopback(host) and not c.get("allow_plain_http"):
        raise ConfigError(
            f"control.listen_host {host!r} is not loopback: the control plane speaks plain "
            "HTTP, so put a TLS-terminating reverse proxy in front and set "
            "control.allow_plain_http: true to confirm")


class ControlServer:
    """The control plane on a waitress server in a background thread.

    ``ControlServer(config).start()`` binds (port 0 picks a free port, see ``.port``);
    ``stop()`` closes the listener and waits for the thread.
    """

    def __init__(self, config: Config, *, host: str | None = None, port: int | None = None,
                 db: Database | None = None, threads: int = 8) -> None:
        self.config = config
        self.host = host if host is not None else config.control["listen_host"]
        self._port = port if port is not None else config.control["listen_port"]
        self._db = db
        self._threads = threads
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app: Any = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"admin UI http://{host}:{self.port}/admin/ · portal /portal/ · "
                f"API /api/v1 · policy /policy")

    def start(self) -> ControlServer:
        check_listen(self.config, self.host)
        self.app = create_app(self.config, self._db)
        self._server = create_server(self.app, host=self.host, port=self._port,
                                     threads=self._threads, ident="hushgate",
                                     clear_untrusted_proxy_headers=True)
        self._thread = threading.Thread(target=self._run, name="hushgate-control",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # The listener is closed by stop(); asyncore may notice that mid-select.
        with contextlib.suppress(OSError):
            self._server.run()

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        logging.getLogger("waitress").setLevel(logging.FATAL)
        # waitress has no public stop: close every channel in its map, then the workers.
        while server._map:
            for channel in list(server._map.values()):
                channel.handle_close()
        server.task_dispatcher.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
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

"""`hushgate proxy|simulator|up` — the long-running processes.

Each runs one or more *services* (objects with ``start()`` and ``stop()``) until SIGINT or
SIGTERM, then stops them in reverse order; the proxy flushes its records on stop.
"""

from __future__ import annotations

import ipaddress
import signal
import threading
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import click

from control.cli.common import state
from control.core import schema

DEFAULT_SIMULATOR_PORT = 9999


class Service(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> Any: ...


def run_services(services: Sequence[tuple[str, Service]],
                 stop_event: threading.Event | None = None) -> None:
    """Start every service in order, wait for SIGINT/SIGTERM, stop them in reverse order."""
    stop = stop_event or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    started: list[tuple[str, Service]] = []
    try:
        for name, service in services:
            service.start()
            started.append((name, service))
            click.echo(f"{name}: {describe(service)}")
        click.echo("running; press Ctrl-C to stop")
        while not stop.wait(0.5):
            pass
    finally:
        for name, service in reversed(started):
            service.stop()
            click.echo(f"{name}: stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def describe(service: Any) -> str:
    if getattr(service, "base_url", None):
        return f"listening on {service.base_url}"
    port = getattr(service, "port", None)
    host = getattr(service, "host", None) or "127.0.0.1"
    return f"listening on {host}:{port}" if port else "running"


def _proxy_service(host: str | None = None, port: int | None = None) -> Service:
    from proxy_addons.runner import ProxyServer

    st = state()
    db = st.require_schema()
    return ProxyServer(st.config, db, listen_host=host, listen_port=port)


def _simulator_service(host: str, port: int) -> Service:
    from control.simulator import Simulator

    return Simulator(host=host, port=port)


def _loopback_simulator_port(config: Any) -> int | None:
    """The port of a provider on loopback that the demo simulator should serve, if any."""
    for provider in config.providers.values():
        parts = urlsplit(provider.base_url)
        try:
            loop = ipaddress.ip_address(parts.hostname or "").is_loopback
        except ValueError:
            loop = parts.hostname == "localhost"
        if loop and provider.name.startswith("simulator"):
            return parts.port or 80
    return None


@click.command("proxy")
@click.option("--host", default=None, help="Listen address (default: proxy.listen_host).")
@click.option("--port", type=int, default=None, help="Listen port (default: proxy.listen_port).")
def proxy_command(host: str | None, port: int | None) -> None:
    """Run the gateway proxy from the configuration."""
    run_services([("proxy", _proxy_service(host, port))])


@click.command("simulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=DEFAULT_SIMULATOR_PORT, show_default=True)
def simulator_command(host: str, port: int) -> None:
    """Run the provider simulator (OpenAI and Anthropic formats) for demos and tests."""
    run_services([("simulator", _simulator_service(host, port))])


def up_services() -> list[tuple[str, Service]]:
    """What one machine needs, in start order. The control plane joins this list."""
    st = state()
    if not schema.is_current(st.db):
        schema.upgrade(st.db)  # the embedded default works with nothing else installed
    services: list[tuple[str, Service]] = []
    sim_port = _loopback_simulator_port(st.config)
    if sim_port is not None:
        services.append(("simulator", _simulator_service("127.0.0.1", sim_port)))
    services.append(("proxy", _proxy_service()))
    return services


@click.command("up")
def up_command() -> None:
    """Run everything one machine needs: the demo simulator (if configured) and the proxy."""
    run_services(up_services())


COMMANDS = [proxy_command, simulator_command, up_command]

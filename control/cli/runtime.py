"""`hushgate proxy|simulator|serve|up` — the long-running processes.

Each runs one or more *services* (objects with ``start()`` and ``stop()``) until SIGINT or
SIGTERM, then stops them in reverse order; the proxy flushes its records on stop.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import click

from control.cli.common import state
from control.core import schema
from control.core.net import is_loopback

DEFAULT_SIMULATOR_PORT = 9999


class Service(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> Any: ...


def run_services(services: Sequence[tuple[str, Service]],
                 stop_event: threading.Event | None = None,
                 after_start: Callable[[], None] | None = None) -> None:
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
        if after_start is not None:
            after_start()
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
    hint = getattr(service, "describe", None)
    if callable(hint):
        return str(hint())
    if getattr(service, "base_url", None):
        return f"listening on {service.base_url}"
    port = getattr(service, "port", None)
    host = getattr(service, "host", None) or "127.0.0.1"
    return f"listening on {host}:{port}" if port else "running"


def _proxy_service(host: str | None = None, port: int | None = None,
                   workers: int | None = None) -> Service:
    """The proxy in this process, or (``workers`` > 1, default ``proxy.workers``) a
    supervisor of that many worker processes on one address (SO_REUSEPORT)."""
    from proxy_addons.runner import ProxyServer

    st = state()
    db = st.require_schema()
    workers = workers or st.config.proxy["workers"]
    if workers > 1:
        from proxy_addons.runner import mitmproxy_options
        from proxy_addons.workers import WorkerPool

        opts = mitmproxy_options(st.config, listen_host=host, listen_port=port)
        try:
            return WorkerPool(workers, config_path=st.config_path or
                              os.environ.get("HUSHGATE_CONFIG"),
                              host=opts["listen_host"], port=opts["listen_port"])
        except OSError as exc:
            raise click.ClickException(f"proxy: cannot listen on {opts['listen_host']}:"
                                       f"{opts['listen_port']} ({exc.strerror})") from None
    from control.core.metrics import ProxyMetrics

    return ProxyServer(st.config, db, listen_host=host, listen_port=port,
                       observer=ProxyMetrics.from_config(st.config))


def _simulator_service(host: str, port: int, require_key: str | None = None) -> Service:
    from control.simulator import Simulator

    return Simulator(host=host, port=port, require_key=require_key)


def _demo_provider_key(config: Any) -> str:
    """The key the demo simulator expects: the simulator providers' configured key, or a
    random one put into their env var for this process (the proxy reads it from there)."""
    sims = [p for p in config.providers.values() if p.name.startswith("simulator")]
    for provider in sims:
        key = provider.api_key()
        if key:
            return key
    key = "sim-" + secrets.token_urlsafe(24)
    for provider in sims:
        if provider.key_env:
            os.environ[provider.key_env] = key
    return key


def _loopback_simulator_port(config: Any) -> int | None:
    """The port of a provider on loopback that the demo simulator should serve, if any."""
    for provider in config.providers.values():
        parts = urlsplit(provider.base_url)
        if is_loopback(parts.hostname) and provider.name.startswith("simulator"):
            return parts.port or 80
    return None


@click.command("proxy")
@click.option("--host", default=None, help="Listen address (default: proxy.listen_host).")
@click.option("--port", type=int, default=None, help="Listen port (default: proxy.listen_port).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Proxy processes on the one address (default: proxy.workers).")
def proxy_command(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the gateway proxy from the configuration."""
    run_services([("proxy", _proxy_service(host, port, workers))])


@click.command("simulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=DEFAULT_SIMULATOR_PORT, show_default=True)
def simulator_command(host: str, port: int) -> None:
    """Run the provider simulator (OpenAI and Anthropic formats) for demos and tests."""
    run_services([("simulator", _simulator_service(host, port))])


def warn_placeholder_policy(config: Any) -> None:
    """Say it loudly while the published policy tells people to write to nobody."""
    from control.core.policy import placeholder_policy_fields

    fields = placeholder_policy_fields(config)
    if fields:
        click.echo(f"warning: the published privacy policy names placeholder details "
                   f"({', '.join(fields)}): set your own in the config's policy section",
                   err=True)


def _control_services(host: str | None = None, port: int | None = None, threads: int = 8,
                      housekeeping: bool = True) -> list[tuple[str, Service]]:
    """The control plane, and the background work of the long-running service."""
    from control.core.housekeeping import Housekeeping
    from control.web.server import ControlServer

    st = state()
    db = st.require_schema()
    services: list[tuple[str, Service]] = [
        ("control plane", ControlServer(st.config, host=host, port=port, threads=threads))]
    if housekeeping:
        services.append(("housekeeping", Housekeeping(db, st.config)))
    return services


@click.command("serve")
@click.option("--host", help="Listen address (default: control.listen_host).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: control.listen_port).")
@click.option("--threads", type=click.IntRange(1, 128), default=8, show_default=True)
@click.option("--no-housekeeping", is_flag=True,
              help="Don't run retention and mail delivery here (extra replicas).")
def serve_command(host: str | None, port: int | None, threads: int,
                  no_housekeeping: bool) -> None:
    """Run the control plane (admin UI, portal, API, webhook) on cheroot, over HTTPS when
    control.tls is set, with the scheduled retention purge, policy publication and mail
    delivery."""
    run_services(_control_services(host, port, threads, housekeeping=not no_housekeeping),
                 after_start=lambda: warn_placeholder_policy(state().config))


def up_services(workers: int | None = None) -> list[tuple[str, Service]]:
    """What one machine needs, in start order."""
    st = state()
    if not schema.is_current(st.db):
        schema.upgrade(st.db)  # the embedded default works with nothing else installed
    from control.cli.init import ensure_first_admin

    ensure_first_admin(generate=True)  # so the first `up` can be signed in to
    services: list[tuple[str, Service]] = []
    sim_port = _loopback_simulator_port(st.config)
    if sim_port is not None:
        services.append(("simulator", _simulator_service(
            "127.0.0.1", sim_port, require_key=_demo_provider_key(st.config))))
    services.append(("proxy", _proxy_service(workers=workers)))
    services.extend(_control_services())
    return services


@click.command("up")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Proxy processes on the one address (default: proxy.workers).")
def up_command(workers: int | None) -> None:
    """Run everything one machine needs: the demo simulator (if configured), the proxy, the
    control plane and its scheduled housekeeping, on the configured database."""
    run_services(up_services(workers),
                 after_start=lambda: warn_placeholder_policy(state().config))


COMMANDS = [proxy_command, simulator_command, serve_command, up_command]

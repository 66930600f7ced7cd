"""Safe mitmproxy settings, enforced: hushgate sets them and refuses changes that leak.

DESIGN.md lists what leaks by default: ``flow_detail >= 1`` prints raw upstream bytes,
``termlog_verbosity=info`` prints request headers, ``save_stream_file``/``hardump`` write
bodies, ``store_streamed_bodies`` keeps them, eager connections contact providers before
authentication. :data:`SAFE_OPTIONS` are applied at start; :class:`Safety` (loaded before
the Gateway) raises ``OptionsError`` if anything later turns a leaking option on, so a user
can't enable body logging by accident. On a listener without a configured certificate it
also refuses TLS: mitmproxy would otherwise answer a ClientHello with a certificate minted
by its auto-generated CA.

mitmproxy's own log lines can quote raw bytes after a colon (``Bad HTTP request line:
b'...'``, ``unexpected server response: b'...'``): :class:`RedactingFilter` keeps only the
text before the first ``": "`` and drops tracebacks.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx, exceptions
from mitmproxy.proxy import commands, events, layer, layers

#: Options hushgate always sets (the proxy's listen address, mode, TLS are added by runner).
SAFE_OPTIONS: dict[str, Any] = {
    "flow_detail": 0,
    "termlog_verbosity": "warn",
    "save_stream_file": None,
    "hardump": "",
    "store_streamed_bodies": False,
    "proxy_debug": False,
    "connection_strategy": "lazy",
    "http2": False,
    "http3": False,
    "websocket": False,
    "rawtcp": False,
    "onboarding": False,
    "block_global": False,
    "ssl_insecure": False,
    "anticache": False,
    "anticomp": False,
    "server_replay_kill_extra": False,
    "keep_host_header": False,
    "validate_inbound_headers": True,
}

#: option -> predicate that is True when the value is safe.
_GUARDS: dict[str, Any] = {
    "flow_detail": lambda v: v == 0,
    "termlog_verbosity": lambda v: v in ("warn", "error"),
    "save_stream_file": lambda v: not v,
    "hardump": lambda v: not v,
    "store_streamed_bodies": lambda v: not v,
    "proxy_debug": lambda v: not v,
    "connection_strategy": lambda v: v == "lazy",
    "ssl_insecure": lambda v: not v,
    "http2": lambda v: not v,
    "validate_inbound_headers": lambda v: bool(v),
    "scripts": lambda v: not v,
    "modify_body": lambda v: not v,
    "modify_headers": lambda v: not v,
    "map_remote": lambda v: not v,
    "map_local": lambda v: not v,
    "server_replay": lambda v: not v,
    "client_replay": lambda v: not v,
    "rfile": lambda v: not v,
}


def unsafe_options(values: dict[str, Any]) -> list[str]:
    """Names of options whose value would leak content or bypass the Gateway."""
    return sorted(n for n, ok in _GUARDS.items() if n in values and not ok(values[n]))


class _Refuse(layer.Layer):
    """Closes the client connection (TLS offered to a plain-HTTP listener)."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)


class Safety:
    def __init__(self, *, tls: bool = True) -> None:
        self.tls = tls  # the listener has a configured certificate

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if not self.tls and isinstance(nextlayer.layer, layers.ClientTLSLayer):
            nextlayer.layer = _Refuse(nextlayer.context)

    def configure(self, updated: set[str]) -> None:
        values = {name: getattr(ctx.options, name) for name in updated
                  if name in _GUARDS and hasattr(ctx.options, name)}
        bad = unsafe_options(values)
        if bad:
            raise exceptions.OptionsError(
                "hushgate refuses unsafe mitmproxy options: " + ", ".join(bad))


class RedactingFilter(logging.Filter):
    """Keep the safe head of a mitmproxy log message; drop quoted bytes and tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("hushgate"):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            message = "log message"
        record.msg = message.split(": ", 1)[0].split("\n", 1)[0][:200]
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def install_logging(level: int = logging.WARNING) -> None:
    """Route mitmproxy's and hushgate's logs through the redacting filter to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.setLevel(level)
    for name in ("mitmproxy", "hushgate"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(f, RedactingFilter) for h in logger.handlers for f in h.filters):
            logger.addHandler(handler)
        logger.propagate = False

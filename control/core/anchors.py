"""External anchors: signed chain heads pushed off the machine, to a sink the operator runs.

The head file (``control.core.audit_head``) lives beside the database, so someone who can
rewrite both could reset them to an older consistent point. Each anchored head is therefore
also sent to append-only storage elsewhere:

- ``audit.anchor_syslog``: RFC 5424 messages over TCP (``tcp://host:port``) or TLS
  (``tls://host:port``), octet-counted framing (RFC 6587), e.g. to rsyslog;
- ``audit.anchor_https``: an HTTPS ``POST`` of the head as JSON, e.g. to a log service or
  an object store with object lock.

The message is the head-file line itself (JSON with its HMAC), so ``hushgate audit verify
--anchors FILE`` can check the chain against whatever the sink collected, and nobody without
the audit key can forge one. A push is best effort and bounded by ``anchor_timeout_seconds``:
a failure is logged and returned, never blocks a purge.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
from datetime import UTC, datetime
from urllib.parse import urlsplit

from control.core.audit_head import HeadEntry
from control.core.config import Config

log = logging.getLogger("hushgate.audit")
APP_NAME = "hushgate"
MSG_ID = "audit-head"
FACILITY_AUTHPRIV_NOTICE = 10 * 8 + 5  # authpriv (10), notice (5)


def syslog_message(entry: HeadEntry, hostname: str | None = None,
                   now: datetime | None = None) -> bytes:
    """One RFC 5424 message carrying the signed head as its MSG."""
    stamp = (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = (hostname or socket.gethostname() or "-")[:255]
    body = json.dumps(entry.as_dict(), sort_keys=True)
    return (f"<{FACILITY_AUTHPRIV_NOTICE}>1 {stamp} {host} {APP_NAME} - {MSG_ID} - "
            f"{body}").encode()


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def push_syslog(url: str, entry: HeadEntry, *, ca_file: str | None = None,
                timeout: float = 5.0) -> None:
    """Send one head to a syslog receiver over TCP or TLS (octet-counting framing)."""
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname:
        raise ValueError("audit.anchor_syslog must be tcp://host:port or tls://host:port")
    port = parts.port or (6514 if parts.scheme == "tls" else 514)
    msg = syslog_message(entry)
    frame = str(len(msg)).encode() + b" " + msg
    with socket.create_connection((parts.hostname, port), timeout=timeout) as raw:
        if parts.scheme == "tls":
            with _tls_context(ca_file).wrap_socket(raw, server_hostname=parts.hostname) as s:
                s.sendall(frame)
                s.shutdown(socket.SHUT_WR)
        else:
            raw.sendall(frame)
            raw.shutdown(socket.SHUT_WR)


def push_https(url: str, entry: HeadEntry, *, ca_file: str | None = None,
               timeout: float = 5.0) -> None:
    """POST one head as JSON; any 2xx is an acknowledgement."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("audit.anchor_https must be an https:// URL")
    body = json.dumps({"hushgate_audit_head": entry.as_dict()}, sort_keys=True).encode()
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                       context=_tls_context(ca_file))
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        status = conn.getresponse().status
    finally:
        conn.close()
    if not 200 <= status < 300:
        raise OSError(f"the anchor endpoint answered HTTP {status}")


def push(config: Config, entry: HeadEntry) -> list[str]:
    """Push ``entry`` to every configured sink; returns the problems (empty when all took
    it). Problems name the sink and the error class, never a URL's credentials."""
    a = config.raw["audit"]
    timeout = float(a.get("anchor_timeout_seconds") or 5)
    problems = []
    for name, url, send in (("syslog", a.get("anchor_syslog"), push_syslog),
                            ("https", a.get("anchor_https"), push_https)):
        if not url:
            continue
        try:
            send(url, entry, ca_file=a.get("anchor_ca_file"), timeout=timeout)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            problem = f"audit head {entry.seq} not pushed to the {name} anchor: " \
                      f"{type(exc).__name__}"
            log.error("%s", problem)
            problems.append(problem)
    return problems

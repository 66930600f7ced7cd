"""Helpers shared by the proxy tests (imported as ``proxy_helpers``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from control.core import accounts, keys, wallet
from control.core.audit import Actor
from control.core.config import Config, load_config
from control.core.context import Ctx
from control.core.db import Database

ACTOR = Actor("cli", "test-admin")

PROVIDER_KEY_ENV = "HG_TEST_PROVIDER_KEY"
PROVIDER_KEY = "sk-provider-test-key-0123456789"


class Upstream:
    """One request the simulator received, whatever shape the simulator stores it in."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        headers = raw.get("headers") if isinstance(raw, dict) else getattr(raw, "headers", {})
        self.headers = {k.lower(): v for k, v in dict(headers or {}).items()}
        body = raw.get("body") if isinstance(raw, dict) else getattr(raw, "body", None)
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        if isinstance(self.body, dict):
            return self.body
        if isinstance(self.body, bytes | bytearray):
            return json.loads(self.body)
        return json.loads(self.body or "null")


def last_upstream(sim: Any) -> Upstream:
    assert sim.requests, "the simulator received nothing"
    return Upstream(sim.requests[-1])


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes; return (status, body) of the HTTP/1.1 answer (0 if none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                length = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length is not None and len(rest) >= length:
                    break
    if not buf.startswith(b"HTTP/"):
        return 0, buf
    status = int(buf.split(b" ", 2)[1])
    return status, buf.partition(b"\r\n\r\n")[2]


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """A well-formed POST with http.client; returns (status, parsed JSON or raw bytes)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    resp = None
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        status = resp.status
        data = resp.read()
    finally:
        # The response owns a file on the socket: if the server answered early and closed
        # (a 413 before the body was read) getresponse() has already detached it from the
        # connection, so conn.close() alone leaves the socket to the garbage collector
        # (an unclosed-socket ResourceWarning, an error under filterwarnings=error).
        if resp is not None:
            resp.close()
        conn.close()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data

# Simulator fault names (control.simulator: ``SIM_FAULT:<name>`` in a prompt).
FAULT_SERVER_ERROR = "server_error"
FAULT_HANG = "timeout"
FAULT_CUT = "cut"


def make_config(tmp_path: Path, db_url: str, **overrides: Any) -> Config:
    """Like tests/conftest.py's make_config (cheap bcrypt, data in tmp_path)."""
    base: dict[str, Any] = {"data_dir": str(tmp_path / "data"), "database": {"url": db_url},
                            "auth": {"bcrypt_cost": 4, "revocation_poll_ms": 200}}
    for k, v in overrides.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) \
            else v
    return load_config(overrides=base)


def catalog(base_url: str) -> dict[str, Any]:
    """Providers and models pointing at the simulator."""
    return {
        "providers": [
            {"name": "sim-openai", "base_url": base_url, "api_format": "openai",
             "key_env": PROVIDER_KEY_ENV},
            {"name": "sim-anthropic", "base_url": base_url, "api_format": "anthropic",
             "key_env": PROVIDER_KEY_ENV},
        ],
        "models": [
            {"name": "gpt-test", "provider": "sim-openai", "upstream_model": "sim-gpt",
             "prices": {"input": 1_000_000, "output": 2_000_000, "cached_input": 500_000},
             "max_output_tokens": 256},
            {"name": "embed-test", "provider": "sim-openai", "upstream_model": "sim-embed",
             "endpoints": ["embeddings"], "prices": {"input": 100_000, "output": 0}},
            {"name": "claude-test", "provider": "sim-anthropic", "upstream_model": "sim-claude",
             "prices": {"input": 3_000_000, "output": 15_000_000, "cached_input": 300_000},
             "max_output_tokens": 256},
        ],
    }


def setup_account(config: Config, db: Database, balance: int) -> tuple[str, str, str]:
    with db.transaction() as session:
        ctx = Ctx(session, config, ACTOR)
        account = accounts.create_account(ctx, name="Test User", email="t@example.com",
                                          adult_attested=True)
        if balance:
            wallet.topup(ctx, account.id, balance, idempotency_key="seed")
        key, raw = keys.create_key(ctx, account.id)
        return account.id, key.key_id, raw

"""Configuration: one YAML file, validated against ``schemas/config.schema.json``.

Secrets never live in the YAML. Provider keys come from environment variables (or files)
named in the config; the audit HMAC key and the session secret come from an environment
variable, a named file, or — on first run — a file generated in the data folder with 0600
permissions.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import stat
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

from control.core import files
from control.core.errors import ConfigError

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
CONFIG_ENV = "HUSHGATE_CONFIG"

#: Built-in defaults: the embedded setup (SQLite in ./hushgate-data), policy retention windows.
DEFAULTS: dict[str, Any] = {
    "data_dir": "./hushgate-data",
    "database": {"url": None, "url_env": "HUSHGATE_DATABASE_URL", "pool_size": 10, "echo": False},
    "proxy": {
        "listen_host": "127.0.0.1",
        "listen_port": 8080,
        "tls": {"cert_file": None, "key_file": None},
        "allow_plain_http": False,
        "max_request_bytes": 10 * 1024 * 1024,
        "upstream_timeout_ms": 120_000,
        "stream_idle_timeout_ms": 60_000,
        "max_request_seconds": 3600,
        "records_jsonl": None,
        "record_batch_size": 500,
        "record_flush_ms": 0,
        "outcome_journal": True,
        "workers": 1,
    },
    "control": {
        "listen_host": "127.0.0.1",
        "listen_port": 8090,
        "tls": {"cert_file": None, "key_file": None},
        "allow_plain_http": False,
        "secure_cookies": None,
        "session_idle_minutes": 30,
        "session_absolute_hours": 12,
        "login_max_attempts": 5,
        "login_window_seconds": 300,
        "login_client_free_attempts": 5,
        "login_max_delay_seconds": 300,
        "payment_webhook_secret_env": "HUSHGATE_PAYMENT_WEBHOOK_SECRET",
        "payment_webhook_tolerance_seconds": 300,
        # the base of links in messages and processor return pages; null: the listen address
        "public_url": None,
        "password_reset_minutes": 30,
        "invite_hours": 72,
    },
    "providers": [
        {
            "name": "simulator",
            "base_url": "http://127.0.0.1:9999",
            "api_format": "openai",
            "key_env": "HUSHGATE_SIMULATOR_KEY",
        },
        {
            "name": "simulator-anthropic",
            "base_url": "http://127.0.0.1:9999",
            "api_format": "anthropic",
            "key_env": "HUSHGATE_SIMULATOR_KEY",
        },
    ],
    "models": [
        {
            "name": "sim-gpt",
            "provider": "simulator",
            "upstream_model": "sim-gpt",
            "prices": {"input": 150_000, "output": 600_000, "cached_input": 75_000},
            "max_output_tokens": 1024,
        },
        {
            "name": "sim-embed",
            "provider": "simulator",
            "upstream_model": "sim-embed",
            "endpoints": ["embeddings"],
            "prices": {"input": 20_000, "output": 0},
        },
        {
            "name": "sim-claude",
            "provider": "simulator-anthropic",
            "upstream_model": "sim-claude",
            "prices": {"input": 3_000_000, "output": 15_000_000, "cached_input": 300_000},
            "max_output_tokens": 1024,
        },
    ],
    "wallet": {
        "currency": "USD",
        "minor_unit_scale": 1_000_000,
        "max_amount": 1_000_000_000_000,
        # Only for holds of callers that don't register as a proxy instance: a registered
        # proxy's holds live as long as its heartbeat. Must outlast the longest request.
        "hold_ttl_seconds": 3900,
        "low_balance_threshold": 1_000_000,
        "heartbeat_seconds": 5,
        "instance_dead_after_seconds": 30,
        "lease_size": 5_000_000,
        "lease_share_percent": 50,
        "lease_idle_seconds": 30,
    },
    "retention": {
        "request_records_days": 90,
        "audit_events_days": 90,
        "deleted_account_erasure_days": 30,
        "schedule_minutes": 60,
        "batch_size": 5000,
    },
    "auth": {
        "bcrypt_cost": 12,
        "key_cache_ttl_seconds": 60,
        "revocation_poll_ms": 500,
        "redis_url": None,
        "redis_url_env": "HUSHGATE_REDIS_URL",
    },
    "privacy": {"client_ip": "off", "user_agent": "off"},
    "secrets": {
        "audit_hmac_key_file": None,
        "audit_hmac_key_env": "HUSHGATE_AUDIT_HMAC_KEY",
        "session_secret_file": None,
        "session_secret_env": "HUSHGATE_SESSION_SECRET",
    },
    "audit": {"head_file": None, "anchor_syslog": None, "anchor_https": None,
              "anchor_ca_file": None, "anchor_timeout_seconds": 5},
    "policy": {
        "operator_name": "hushgate operator",
        "contact_email": "privacy@example.com",
        # null: the date this install first published its policy (``hushgate policy publish``,
        # also run at start); a date pins it
        "last_updated": None,
        "minimum_age": 18,
    },
    "smtp": {
        "host": None,
        "port": 25,
        "from_address": "hushgate@localhost",
        "starttls": False,
        "username": None,
        "password_env": "HUSHGATE_SMTP_PASSWORD",
        "timeout_seconds": 10,
    },
    # self-service top-ups through a payment processor's hosted checkout
    "payments": {
        "provider": None,  # null: no self-service top-ups; "stripe"
        "secret_key_env": "HUSHGATE_STRIPE_SECRET_KEY",
        "api_base": None,  # null: the processor's own API
        "min_amount": 5_000_000,
        "max_amount": 500_000_000,
        "success_url": None,
        "cancel_url": None,
        "timeout_seconds": 20,
    },
    # Prometheus metrics; owned by the self-hosting work
    "metrics": {
        "enabled": True,
        "token_env": "HUSHGATE_METRICS_TOKEN",
        "token_file": None,
        "loopback_without_token": True,
        "multiprocess_dir": None,
    },
}


@dataclass(frozen=True)
class Prices:
    """Prices in minor currency units per million tokens."""

    input: int
    output: int
    cached_input: int


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    api_format: str
    key_env: str | None
    key_file: str | None
    verify_tls: bool
    ca_file: str | None

    def api_key(self) -> str | None:
        """The provider key, read at call time so rotations need no restart."""
        if self.key_file:
            try:
                return Path(self.key_file).read_text().strip() or None
            except OSError:
                return None
        if self.key_env:
            return os.environ.get(self.key_env) or None
        return None


ENDPOINTS_BY_FORMAT = {
    "openai": ("chat.completions", "completions", "embeddings", "responses"),
    "anthropic": ("messages",),
}


@dataclass(frozen=True)
class Model:
    name: str
    provider: Provider
    upstream_model: str
    endpoints: tuple[str, ...]
    prices: Prices
    max_output_tokens: int


@dataclass
class Config:
    """The validated configuration. ``raw`` keeps the merged dict (defaults + file)."""

    raw: dict[str, Any]
    path: Path | None
    data_dir: Path
    database_url: str = field(repr=False)  # may carry a password
    providers: dict[str, Provider] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    # shared rate limits (auth.redis_url / redis_url_env); may carry a password
    redis_url: str | None = field(default=None, repr=False)

    def section(self, name: str) -> dict[str, Any]:
        return self.raw[name]

    @property
    def proxy(self) -> dict[str, Any]:
        return self.raw["proxy"]

    @property
    def control(self) -> dict[str, Any]:
        return self.raw["control"]

    @property
    def wallet(self) -> dict[str, Any]:
        return self.raw["wallet"]

    @property
    def retention(self) -> dict[str, Any]:
        return self.raw["retention"]

    @property
    def auth(self) -> dict[str, Any]:
        return self.raw["auth"]

    @property
    def privacy(self) -> dict[str, Any]:
        return self.raw["privacy"]

    @property
    def policy(self) -> dict[str, Any]:
        return self.raw["policy"]

    @property
    def smtp(self) -> dict[str, Any]:
        return self.raw["smtp"]

    _secrets: dict[str, bytes] = field(default_factory=dict, repr=False)
    _secrets_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def audit_hmac_key(self) -> bytes:
        """The key of the audit chain's HMAC (env, named file, or generated in data_dir)."""
        with self._secrets_lock:
            if "audit" in self._secrets:
                return self._secrets["audit"]
            s = self.raw["secrets"]
            self._secrets["audit"] = _secret(s.get("audit_hmac_key_env"),
                                             s.get("audit_hmac_key_file"),
                                             self.data_dir / "audit-hmac.key")
        return self._secrets["audit"]

    def session_secret(self) -> bytes:
        """The Flask session / CSRF secret (env, named file, or generated in data_dir)."""
        with self._secrets_lock:
            if "session" in self._secrets:
                return self._secrets["session"]
            s = self.raw["secrets"]
            self._secrets["session"] = _secret(s.get("session_secret_env"),
                                               s.get("session_secret_file"),
                                               self.data_dir / "session-secret.key")
        return self._secrets["session"]

    def secure_files(self) -> None:
        """Private files at start: the data folder 0700; the head file, the JSON-lines sink
        and generated secrets 0600 (looser ones are tightened with a warning; a secret file
        others can read is refused when it is read). SQLite files: ``Database``."""
        if self.data_dir.exists():
            files.private_dir(self.data_dir)
        for path in (self.audit_head_path(), self.proxy.get("records_jsonl")):
            if path and Path(path).exists():
                files.private_file(Path(path))
        s = self.raw["secrets"]
        for configured, generated in ((s.get("audit_hmac_key_file"), "audit-hmac.key"),
                                      (s.get("session_secret_file"), "session-secret.key")):
            files.check_secret_file(Path(configured) if configured
                                    else self.data_dir / generated)

    def audit_key_would_be_generated(self) -> Path | None:
        """The path a new audit key would be generated at, if reading it now would do that
        (no key in the environment, no configured file, none generated yet); else None."""
        s = self.raw["secrets"]
        env = s.get("audit_hmac_key_env")
        if (env and os.environ.get(env)) or s.get("audit_hmac_key_file") \
                or "audit" in self._secrets:
            return None
        path = self.data_dir / "audit-hmac.key"
        return None if path.exists() else path

    def audit_head_path(self) -> Path:
        head = self.raw["audit"].get("head_file")
        return Path(head) if head else self.data_dir / "audit-head.log"


def _secret(env: str | None, file: str | None, generated: Path) -> bytes:
    if env and os.environ.get(env):
        return os.environ[env].encode()
    path = Path(file) if file else generated
    if path.exists():
        files.check_secret_file(path)
        try:
            value = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
        if len(value) < 32:
            raise ConfigError(f"secret file {path} holds fewer than 32 bytes")
        return value
    if file:
        raise ConfigError(f"secret file {path} does not exist")
    files.private_dir(path.parent)
    value = secrets.token_hex(32).encode()
    # Write a private temp file, then hard-link it into place: the link is atomic and fails
    # if another process won the race, in which case its complete secret is used.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        value = path.read_bytes().strip()
    finally:
        tmp.unlink()
    return value


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load one JSON Schema from ``schemas/``."""
    return json.loads((SCHEMAS_DIR / name).read_text())


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _where(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _explain(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = _where(error)
        names = ", ".join(f"{prefix}.{e}" if prefix != "(top level)" else e for e in extra)
        return f"unknown key {names}"
    if error.validator == "required":
        return f"{_where(error)}: {error.message}"
    value = error.instance
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return f"{_where(error)}: {shown} is invalid ({error.validator}: {error.validator_value!r})"


def validate_config_dict(data: Any) -> None:
    """Validate a config mapping, raising ConfigError that names the bad key and why."""
    validator = jsonschema.Draft202012Validator(load_schema("config.schema.json"))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration: " + _explain(errors[0]))


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Load, merge with defaults, validate and resolve the configuration.

    ``path`` falls back to ``$HUSHGATE_CONFIG``; with neither, the built-in defaults run on
    SQLite in ``./hushgate-data``.
    """
    path = path or os.environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    cfg_path: Path | None = None
    if path:
        cfg_path = Path(path)
        try:
            text = cfg_path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {cfg_path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {cfg_path} is not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {cfg_path} must be a mapping at the top level")
        validate_config_dict(loaded)
        data = loaded
    if overrides:
        data = _merge(data, overrides)
    merged = _merge(DEFAULTS, data)
    # Lists replace, not merge: a file that lists providers/models replaces the demo catalog.
    validate_config_dict(merged)
    return _resolve(merged, cfg_path)


def _resolve(raw: dict[str, Any], cfg_path: Path | None) -> Config:
    base = cfg_path.parent if cfg_path else Path.cwd()
    data_dir = Path(raw["data_dir"])
    if not data_dir.is_absolute():
        data_dir = (base / data_dir).resolve()
    db = raw["database"]
    url = db.get("url") or (os.environ.get(db["url_env"]) if db.get("url_env") else None)
    if not url:
        url = f"sqlite:///{data_dir / 'hushgate.db'}"
    providers: dict[str, Provider] = {}
    for p in raw["providers"]:
        if p["name"] in providers:
            raise ConfigError(f"invalid configuration: providers: duplicate name {p['name']!r}")
        if p.get("verify_tls") is False:
            raise ConfigError(
                f"invalid configuration: providers.{p['name']}.verify_tls: hushgate always "
                "verifies provider TLS; add a private CA with ca_file instead")
        providers[p["name"]] = Provider(
            name=p["name"], base_url=p["base_url"].rstrip("/"), api_format=p["api_format"],
            key_env=p.get("key_env"), key_file=p.get("key_file"),
            verify_tls=p.get("verify_tls", True), ca_file=p.get("ca_file"),
        )
    models: dict[str, Model] = {}
    for m in raw["models"]:
        if m["name"] in models:
            raise ConfigError(f"invalid configuration: models: duplicate name {m['name']!r}")
        provider = providers.get(m["provider"])
        if provider is None:
            raise ConfigError(
                f"invalid configuration: models.{m['name']}.provider: "
                f"unknown provider {m['provider']!r}")
        allowed = ENDPOINTS_BY_FORMAT[provider.api_format]
        endpoints = tuple(m.get("endpoints") or [e for e in allowed if e != "embeddings"])
        for e in endpoints:
            if e not in allowed:
                raise ConfigError(
                    f"invalid configuration: models.{m['name']}.endpoints: {e!r} is not an "
                    f"endpoint of the {provider.api_format} format")
        pr = m["prices"]
        models[m["name"]] = Model(
            name=m["name"], provider=provider, upstream_model=m.get("upstream_model", m["name"]),
            endpoints=endpoints,
            prices=Prices(pr["input"], pr["output"], pr.get("cached_input", pr["input"])),
            max_output_tokens=m.get("max_output_tokens", 4096),
        )
    _check_money_timing(raw)
    return Config(raw=raw, path=cfg_path, data_dir=data_dir, database_url=url,
                  providers=providers, models=models, redis_url=_redis_url(raw["auth"]))


def _check_money_timing(raw: dict[str, Any]) -> None:
    """Refuse timings that would let a hold or a lease vanish while its request runs."""
    w, proxy = raw["wallet"], raw["proxy"]
    longest = max(proxy.get("max_request_seconds", 3600),
                  -(-proxy.get("upstream_timeout_ms", 0) // 1000))
    if w["hold_ttl_seconds"] <= longest:
        raise ConfigError(
            f"invalid configuration: wallet.hold_ttl_seconds ({w['hold_ttl_seconds']}) must "
            f"be longer than the longest request ({longest} s: proxy.max_request_seconds / "
            "proxy.upstream_timeout_ms), or a running request's hold could expire")
    if w["instance_dead_after_seconds"] < 3 * w["heartbeat_seconds"]:
        raise ConfigError(
            "invalid configuration: wallet.instance_dead_after_seconds must be at least 3 x "
            "wallet.heartbeat_seconds, or a live proxy could be declared dead between two "
            "heartbeats and lose its holds")


REDIS_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(auth: dict[str, Any]) -> str | None:
    """``auth.redis_url``, else the variable ``auth.redis_url_env`` names, else None. The
    error never repeats the URL: it may carry a password."""
    key = "auth.redis_url"
    url = auth.get("redis_url")
    if not url and auth.get("redis_url_env"):
        key = f"auth.redis_url_env ({auth['redis_url_env']})"
        url = os.environ.get(auth["redis_url_env"])
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError if the port is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in REDIS_SCHEMES or not (parts.netloc or parts.path):
        raise ConfigError(f"invalid configuration: {key}: not a Redis URL (expected "
                          "redis://host:port/db, rediss://… or unix:///path/to/socket)")
    return url

"""`hushgate doctor`'s checks: a healthy deployment passes; each broken setting fails with
the check's name and a message that says what to do (parametrized), on SQLite and
PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from control.core import accounts, audit_head, doctor, records, retention
from control.core.audit import Actor
from control.core.config import Config
from control.core.context import Ctx
from control.core.db import Database


def make_private(config: Config) -> None:
    """What a correct install looks like: folder 0700, secrets and database 0600, keys made."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.data_dir.chmod(0o700)
    config.audit_hmac_key()
    config.session_secret()
    for _, path in doctor.secret_files(config):
        if path.exists():
            path.chmod(0o600)


def first_admin(config: Config) -> None:
    """What `hushgate init` leaves: the first admin, whose creation is the first audit event
    (an empty history is a wiped one to `audit verify`)."""
    db = Database.from_config(config)
    try:
        with db.transaction() as session:
            accounts.create_user(Ctx(session, config, Actor("cli", "init")), username="admin",
                                 password="correct horse battery staple 42")
    finally:
        db.dispose()


@pytest.fixture
def healthy(config_factory, db_url: str, monkeypatch: pytest.MonkeyPatch
            ) -> Callable[..., Config]:
    """``healthy(**overrides)`` -> a config whose deployment passes every check."""
    monkeypatch.delenv("HUSHGATE_AUDIT_HMAC_KEY", raising=False)

    def _make(**overrides: Any) -> Config:
        cfg = config_factory(db_url, **overrides)
        make_private(cfg)
        first_admin(cfg)
        make_private(cfg)  # the first event wrote the head file
        return cfg

    return _make


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    out: dict[str, doctor.Check] = {}
    for c in checks:
        out.setdefault(c.name, c)
    return out


def run_retention(config: Config) -> None:
    db = Database.from_config(config)
    try:
        retention.run_retention(db, config)
    finally:
        db.dispose()
    make_private(config)  # the purge wrote the head file


def test_a_healthy_deployment_passes(healthy) -> None:
    config = healthy()
    run_retention(config)  # the scheduler ran once, and anchored the head
    checks = doctor.run_checks(config)
    assert doctor.failed(checks) == []
    got = by_name(checks)
    for name in ("tls.proxy", "tls.control", "permissions.data_dir", "permissions.secrets",
                 "database", "clock", "audit.key", "audit.chain",
                 "retention.scheduler", "retention.due", "providers.keys",
                 "control.public_url"):
        assert got[name].status == doctor.PASS, got[name]
    # the head file is current, but nothing pushes it off this host yet
    assert got["audit.anchor"].status == doctor.WARN
    assert "audit.anchor_syslog" in got["audit.anchor"].fix
    assert got["smtp"].status == doctor.SKIP


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listen_anywhere(which: str) -> dict[str, Any]:
    return {which: {"listen_host": "0.0.0.0"}}  # noqa: S104 - a config value, nothing binds


def _tls_missing_key(tmp_path: Path) -> dict[str, Any]:
    return {"control": {"tls": {"cert_file": str(tmp_path / "nope.pem"),
                                "key_file": str(tmp_path / "nope.key")}}}


def _real_provider_without_key() -> dict[str, Any]:
    return {"providers": [{"name": "openai", "base_url": "https://api.openai.com",
                           "api_format": "openai", "key_env": "HG_DOCTOR_TEST_NO_SUCH_KEY"}],
            "models": [{"name": "gpt-4o", "provider": "openai",
                        "prices": {"input": 1, "output": 1}}]}


# (id, config overrides, what to break after a healthy setup, check, words in detail/fix)
BROKEN: list[tuple[str, Callable[[Path], dict[str, Any]], Callable[[Config], None] | None,
                   str, tuple[str, ...]]] = [
    ("proxy-plain-http-on-all-interfaces", lambda _: _listen_anywhere("proxy"), None,
     "tls.proxy", ("without TLS", "proxy.tls.cert_file")),
    ("control-plain-http-on-all-interfaces", lambda _: _listen_anywhere("control"), None,
     "tls.control", ("without TLS", "control.tls.cert_file")),
    ("control-tls-files-unreadable", _tls_missing_key, None,
     "tls.control", ("cannot be read", "readable PEM")),
    ("data-dir-world-readable", lambda _: {}, lambda c: c.data_dir.chmod(0o755),
     "permissions.data_dir", ("755", "chmod 700")),
    ("audit-key-world-readable", lambda _: {},
     lambda c: (c.data_dir / "audit-hmac.key").chmod(0o644),
     "permissions.secrets", ("audit key", "644", "chmod 600")),
    ("audit-key-missing", lambda _: {}, lambda c: (c.data_dir / "audit-hmac.key").unlink(),
     "audit.key", ("no audit key", "hushgate init")),
    ("audit-key-wrong", lambda _: {},
     lambda c: (c.data_dir / "audit-hmac.key").write_bytes(b"f" * 64),
     "audit.chain", ("audit chain broken", "audit key")),
    ("newest-audit-events-removed", lambda _: {},
     lambda c: audit_head.append_head(c.audit_head_path(), c.audit_hmac_key(), 10_000,
                                      "ab" * 32),
     "audit.chain", ("newest events were removed",)),
    ("provider-key-missing", lambda _: _real_provider_without_key(), None,
     "providers.keys", ("openai", "$HG_DOCTOR_TEST_NO_SUCH_KEY")),
    ("smtp-unreachable", lambda _: {"smtp": {"host": "127.0.0.1", "port": _closed_port(),
                                             "timeout_seconds": 2}}, None,
     "smtp", ("cannot talk to the SMTP server", "smtp.host")),
]


@pytest.mark.parametrize("overrides,breaker,check,words",
                         [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_each_broken_setting_fails_with_its_fix(healthy, tmp_path, overrides, breaker,
                                                check, words) -> None:
    config = healthy(**overrides(tmp_path))
    run_retention(config)
    if breaker is not None:
        breaker(config)
    checks = doctor.run_checks(config)
    bad = by_name(doctor.failed(checks))
    assert check in bad, [c for c in checks if c.status != doctor.PASS]
    said = bad[check].detail + " " + (bad[check].fix or "")
    for word in words:
        assert word in said, said
    # only what was broken fails (a missing audit key also stops the chain check)
    assert set(bad) <= {check, "audit.chain"}, bad


def test_stale_purge_means_the_scheduler_is_dead(healthy) -> None:
    config = healthy()
    run_retention(config)
    db = Database.from_config(config)
    try:
        minutes = config.retention["schedule_minutes"]
        soon = doctor.check_retention(config, db, now=datetime.now(UTC) + timedelta(minutes=5))
        assert soon[0].status == doctor.PASS
        later = doctor.check_retention(
            config, db, now=datetime.now(UTC) + timedelta(minutes=2 * minutes + 11))
    finally:
        db.dispose()
    assert later[0].status == doctor.FAIL and later[0].name == "retention.scheduler"
    assert "not running" in later[0].fix


def test_never_purged_is_a_warning(healthy) -> None:
    config = healthy()
    got = by_name(doctor.run_checks(config))
    assert got["retention.scheduler"].status == doctor.WARN
    assert got["audit.anchor"].status == doctor.WARN
    assert "audit.anchor_syslog" in got["audit.anchor"].fix


def test_an_external_anchor_sink_makes_the_anchor_pass(healthy) -> None:
    config = healthy(audit={"anchor_syslog": "tcp://127.0.0.1:6514"})
    run_retention(config)
    got = by_name(doctor.run_checks(config))
    assert got["audit.anchor"].status == doctor.PASS, got["audit.anchor"]


def test_data_past_its_window_fails(healthy) -> None:
    config = healthy()
    run_retention(config)
    old = (datetime.now(UTC) - timedelta(days=91)).isoformat()
    db = Database.from_config(config)
    try:
        with db.transaction() as s:
            records.insert_records(s, [{
                "time": old, "request_id": "req_old_record_01", "account_id": None,
                "key_id": None, "endpoint": "chat.completions", "method": "POST",
                "provider": None, "model": None, "stream": False, "status": 401,
                "error_type": "invalid_api_key", "input_tokens": 0, "output_tokens": 0,
                "cached_tokens": 0, "estimated": False, "cost": 0, "latency_ms": 1,
                "ttfb_ms": None, "upstream_ms": None, "request_bytes": 1, "response_bytes": 1,
                "client_ip": None, "user_agent": None}])
        got = by_name(doctor.check_retention(config, db))
    finally:
        db.dispose()
    assert got["retention.due"].status == doctor.FAIL
    assert "1 request records" in got["retention.due"].detail
    assert "hushgate retention run" in got["retention.due"].fix


def test_clock_skew_fails(healthy) -> None:
    config = healthy()
    db = Database.from_config(config)
    try:
        assert doctor.check_clock(db).status == doctor.PASS
        skewed = doctor.check_clock(db, now=lambda: datetime.now(UTC) + timedelta(minutes=7))
    finally:
        db.dispose()
    assert skewed.status == doctor.FAIL
    assert "differ by" in skewed.detail and "NTP" in skewed.fix


def test_smtp_reachable_passes(healthy, smtp_server) -> None:
    _, port = smtp_server
    config = healthy(smtp={"host": "127.0.0.1", "port": port})
    check = doctor.check_smtp(config)
    assert check.status == doctor.PASS, check


def test_database_not_migrated(tmp_path, backend, config_factory, pg_admin) -> None:
    """An empty database (never `hushgate init`) fails with the command that fixes it."""
    import uuid

    _pg_exec, _pg_url = pg_admin

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'empty.db'}"
        (tmp_path / "data").mkdir()
        empty = Database(url)
        with empty.engine.connect():
            pass  # creates the file, with no tables
        empty.dispose()
        name = None
    else:
        name = f"hg_t_{uuid.uuid4().hex[:12]}"
        _pg_exec(f'CREATE DATABASE "{name}"')
        url = _pg_url(name)
    try:
        config = config_factory(url)
        check, db = doctor.check_database(config)
    finally:
        if name:
            _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert db is None and check.status == doctor.FAIL
    assert "migration none" in check.detail and "hushgate init" in check.fix


def test_missing_sqlite_file_is_not_created(tmp_path, config_factory) -> None:
    config = config_factory(f"sqlite:///{tmp_path / 'data' / 'hushgate.db'}")
    checks = by_name(doctor.run_checks(config))
    assert checks["database"].status == doctor.FAIL
    assert "hushgate init" in checks["database"].fix
    assert checks["audit.chain"].status == doctor.SKIP
    assert not (tmp_path / "data").exists(), "the doctor must create nothing"


def test_unreachable_postgresql_names_no_password(config_factory) -> None:
    url = f"postgresql://hushgate:s3cret-pw-991@127.0.0.1:{_closed_port()}/hushgate"
    config = config_factory(url)
    check, db = doctor.check_database(config)
    assert db is None and check.status == doctor.FAIL
    assert "cannot reach" in check.detail and "OperationalError" in check.detail
    assert "s3cret-pw-991" not in check.detail + check.fix


def test_running_deployment(healthy, tmp_path) -> None:
    """A real control plane answers; a closed port and plain HTTP to a remote host fail."""
    from control.web.server import ControlServer

    config = healthy()
    server = ControlServer(config, host="127.0.0.1", port=0).start()
    try:
        assert doctor.check_url("running.control", server.url).status == doctor.PASS
    finally:
        server.stop()
    closed = doctor.check_url("running.proxy", f"http://127.0.0.1:{_closed_port()}")
    assert closed.status == doctor.FAIL and "cannot be reached" in closed.detail
    remote = doctor.check_url("running.proxy", "http://192.0.2.1:8080")  # never contacted
    assert remote.status == doctor.FAIL and "plain HTTP" in remote.detail
    bad = doctor.check_url("running.proxy", "ftp://example.com")
    assert bad.status == doctor.FAIL


def test_plain_http_behind_a_terminator_is_a_warning(healthy) -> None:
    config = healthy(proxy={"listen_host": "0.0.0.0", "allow_plain_http": True})  # noqa: S104
    check = doctor.check_listener(config, "proxy")
    assert check.status == doctor.WARN and "firewall" in check.fix


def test_links_need_a_public_url_on_a_wildcard_listener(config_factory, db_url) -> None:
    """Reset and invite links built on 0.0.0.0 reach nobody: a warning that says the key."""
    loopback = doctor.check_public_url(config_factory(db_url))
    assert loopback.status == doctor.PASS and "127.0.0.1" in loopback.detail
    wild = doctor.check_public_url(config_factory(db_url, control={
        "listen_host": "0.0.0.0"}))  # noqa: S104 - a config value, nothing binds
    assert wild.status == doctor.WARN and "control.public_url" in wild.fix
    assert "0.0.0.0" in wild.detail
    public = doctor.check_public_url(config_factory(db_url, control={
        "listen_host": "0.0.0.0", "public_url": "https://gateway.example.com"}))  # noqa: S104
    assert public.status == doctor.PASS and "https://gateway.example.com" in public.detail


def test_secret_files_cover_the_database_and_keys(healthy) -> None:
    config = healthy()
    names = {what for what, _ in doctor.secret_files(config)}
    assert {"audit key", "session secret", "audit head file"} <= names
    if config.database_url.startswith("sqlite"):
        assert "SQLite database" in names


def test_env_audit_key_is_found_without_a_file(healthy, monkeypatch) -> None:
    config = healthy()
    monkeypatch.setenv("HUSHGATE_AUDIT_HMAC_KEY", "k" * 40)
    key, where = doctor.audit_key(config)
    assert key == b"k" * 40 and where == "$HUSHGATE_AUDIT_HMAC_KEY"
    assert "k" * 40 not in where


def test_no_check_leaks_a_secret(healthy, monkeypatch) -> None:
    config = healthy(smtp={"host": "127.0.0.1", "port": _closed_port(), "timeout_seconds": 1,
                           "username": "mailer"})
    monkeypatch.setenv("HUSHGATE_SMTP_PASSWORD", "smtp-pass-7781")
    out = " ".join(f"{c.detail} {c.fix}" for c in doctor.run_checks(config))
    assert "smtp-pass-7781" not in out
    assert config.audit_hmac_key().decode() not in out
    assert os.environ.get("HUSHGATE_AUDIT_HMAC_KEY") is None


def test_database_time_query_runs_on_both_backends(db) -> None:
    with db.read_transaction() as s:
        assert s.execute(text("SELECT 1")).scalar() == 1
    assert doctor.check_clock(db).status == doctor.PASS

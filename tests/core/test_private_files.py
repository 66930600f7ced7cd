"""Files hushgate creates are private to its user; looser ones are tightened or refused.

Runs the real `hushgate` entry point in a subprocess (the umask is set there), starting
from the permissive umask a shell usually has.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ENTRY = "from control.cli import main; main()"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _hushgate(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUSHGATE_ADMIN_PASSWORD": "a-long-enough-password",
           "HUSHGATE_ACTOR": "tester"}
    env.pop("HUSHGATE_AUDIT_HMAC_KEY", None)
    return subprocess.run([sys.executable, "-c", ENTRY, "--config", str(cfg), *args],
                          capture_output=True, text=True, env=env, timeout=60,
                          preexec_fn=lambda: os.umask(0o022))


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[Path, Path]:
    """A config whose SQLite data folder does not exist yet."""
    data = tmp_path / "fresh-data"
    cfg = tmp_path / "hushgate.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(data), "auth": {"bcrypt_cost": 4},
                                   "proxy": {"records_jsonl": str(data / "records.jsonl")}}))
    return cfg, data


def test_everything_hushgate_creates_is_private(fresh):
    cfg, data = fresh
    result = _hushgate(cfg, "init")
    assert result.returncode == 0, result.stderr
    assert _hushgate(cfg, "accounts", "create", "--name", "A", "--email", "a@example.com",
                     "--adult").returncode == 0
    assert _mode(data) == 0o700
    created = sorted(p.name for p in data.iterdir())
    assert {"hushgate.db", "audit-hmac.key", "session-secret.key", "audit-head.log"} \
        <= set(created)
    for p in data.iterdir():
        assert _mode(p) == 0o600, (p.name, oct(_mode(p)))
    # SQLite gives its WAL and shared-memory files the database file's own mode.
    conn = sqlite3.connect(data / "hushgate.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    try:
        for suffix in ("-wal", "-shm"):
            assert _mode(data / f"hushgate.db{suffix}") == 0o600
    finally:
        conn.close()


def test_looser_permissions_found_at_start_are_tightened_with_a_warning(fresh):
    cfg, data = fresh
    assert _hushgate(cfg, "init").returncode == 0
    sink = data / "records.jsonl"
    sink.write_text("")
    for path, mode in ((data, 0o755), (data / "hushgate.db", 0o644),
                       (data / "audit-head.log", 0o644), (sink, 0o644)):
        os.chmod(path, mode)
    result = _hushgate(cfg, "accounts", "list")
    assert result.returncode == 0, result.stderr
    for name in (str(data), "hushgate.db", "audit-head.log", "records.jsonl"):
        assert name in result.stderr and "tightened" in result.stderr
    assert _mode(data) == 0o700
    for path in (data / "hushgate.db", data / "audit-head.log", sink):
        assert _mode(path) == 0o600


@pytest.mark.parametrize("secret", ["audit-hmac.key", "session-secret.key"])
def test_a_secret_file_others_can_read_is_refused(fresh, secret):
    cfg, data = fresh
    assert _hushgate(cfg, "init").returncode == 0
    os.chmod(data / secret, 0o644)
    result = _hushgate(cfg, "audit", "verify")
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: secret file")
    assert str(data / secret) in lines[0] and "Traceback" not in result.stderr
    assert _mode(data / secret) == 0o644  # refused, not silently "fixed"

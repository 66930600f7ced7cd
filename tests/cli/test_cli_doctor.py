"""`hushgate doctor` from the command line: the built-in defaults after `hushgate init`
pass; a broken setting exits 1 with one error line naming the failed checks; --json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from control.cli import cli


@pytest.fixture
def defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The built-in defaults (no config file: SQLite in ./hushgate-data)."""
    monkeypatch.chdir(tmp_path)
    for var in ("HUSHGATE_CONFIG", "HUSHGATE_DATABASE_URL", "HUSHGATE_AUDIT_HMAC_KEY",
                "HUSHGATE_SESSION_SECRET", "HUSHGATE_SIMULATOR_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HUSHGATE_ADMIN_PASSWORD", "a-long-enough-password")
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_defaults_after_init_pass(defaults: CliRunner) -> None:
    assert invoke(defaults, "init").exit_code == 0
    result = invoke(defaults, "doctor")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("all ") and "checks passed" in lines[-1]
    assert all(ln[:4] in {"PASS", "WARN", "SKIP"} for ln in lines[:-1]), result.output
    assert "FAIL" not in result.output
    for name in ("tls.proxy", "permissions.data_dir", "permissions.secrets", "audit.chain",
                 "database", "clock", "providers.keys"):
        assert any(ln.startswith("PASS") and f" {name} " in ln for ln in lines), name

    as_json = invoke(defaults, "doctor", "--json")
    assert as_json.exit_code == 0
    checks = json.loads(as_json.output)
    assert {c["status"] for c in checks} <= {"pass", "warn", "skip"}
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in checks)


def test_broken_setting_exits_1_with_the_fix(defaults: CliRunner,
                                             tmp_path: Path) -> None:
    assert invoke(defaults, "init").exit_code == 0
    (tmp_path / "hushgate-data" / "audit-hmac.key").chmod(0o644)
    result = invoke(defaults, "doctor")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert errors == ["Error: 1 of 15 checks failed: permissions.secrets"], result.output
    fail = [ln for ln in result.output.splitlines() if ln.startswith("FAIL")]
    assert len(fail) == 1 and "fix: chmod 600" in fail[0] and "audit-hmac.key" in fail[0]

    as_json = invoke(defaults, "doctor", "--json")
    assert as_json.exit_code == 1
    body = as_json.output[:as_json.output.rindex("]") + 1]
    failed = [c for c in json.loads(body) if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["permissions.secrets"]


def test_init_under_a_loose_umask_makes_private_files(defaults: CliRunner,
                                                     tmp_path: Path) -> None:
    """`hushgate init` under the usual umask 022 still leaves the data folder 0700 and the
    SQLite file 0600, so the doctor's permission checks pass."""
    previous = os.umask(0o022)
    try:
        assert invoke(defaults, "init").exit_code == 0
        result = invoke(defaults, "doctor")
    finally:
        os.umask(previous)
    data = tmp_path / "hushgate-data"
    assert data.stat().st_mode & 0o077 == 0
    assert (data / "hushgate.db").stat().st_mode & 0o077 == 0
    assert result.exit_code == 0, result.output
    for name in ("permissions.data_dir", "permissions.secrets"):
        assert any(ln.startswith("PASS") and f" {name} " in ln
                   for ln in result.output.splitlines()), result.output


def test_running_deployment_urls(defaults: CliRunner, port_factory) -> None:
    assert invoke(defaults, "init").exit_code == 0
    port = port_factory()
    result = invoke(defaults, "doctor", "--url-proxy", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert "running.proxy" in result.output and "cannot be reached" in result.output


def test_no_database_yet(defaults: CliRunner, tmp_path: Path) -> None:
    result = invoke(defaults, "doctor")
    assert result.exit_code == 1
    assert "run `hushgate init`" in result.output
    assert not (tmp_path / "hushgate-data").exists()

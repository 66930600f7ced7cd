"""Fixtures for the privacy-lifecycle tests: a real SMTP server and the CLI."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from click.testing import CliRunner

# -- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def cli_run(tmp_path, db_url, monkeypatch):
    """Run `hushgate …` against this test's database; ``ok`` asserts the exit code."""
    from control.cli import cli

    cfg = tmp_path / "hushgate.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                   "database": {"url": db_url}, "auth": {"bcrypt_cost": 4}}))
    monkeypatch.setenv("HUSHGATE_ACTOR", "tester")
    runner = CliRunner()

    def _run(*args: str, ok: bool = True, input: str | None = None) -> Any:
        result = runner.invoke(cli, ["--config", str(cfg), *args], input=input,
                               catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code != 0, result.output
            assert "Traceback" not in result.output
        return result

    return _run

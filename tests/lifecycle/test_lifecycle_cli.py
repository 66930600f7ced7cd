"""`hushgate retention|export|policy|notify|audit head|accounts erase` via CliRunner."""

from __future__ import annotations

import json

import pytest
from lifecycle_helpers import add_records, as_json, days_ago

from control.core import export
from control.core.config import load_config
from control.core.db import Database


@pytest.fixture
def account(cli_run, monkeypatch):
    monkeypatch.setenv("HUSHGATE_ADMIN_PASSWORD", "a-long-enough-password")
    cli_run("init")
    out = cli_run("accounts", "create", "--name", "Alan Turing", "--email", "alan@example.com",
                  "--adult", "--json")
    return as_json(out)["id"]


@pytest.fixture
def cli_db(tmp_path, account):
    db = Database.from_config(load_config(tmp_path / "hushgate.yaml"))
    yield db
    db.dispose()


def test_retention_run_status_and_dry_run(cli_run, cli_db, account):
    add_records(cli_db, account, [days_ago(91), days_ago(91), days_ago(1)])
    dry = as_json(cli_run("retention", "run", "--dry-run", "--json"))
    assert dry["dry_run"] and dry["request_records"] == 2
    status = as_json(cli_run("retention", "status", "--json"))
    assert status["status"]["request_records_due"] == 2
    assert status["windows"]["request_records_days"] == 90
    assert "removed 2 request records" in cli_run("retention", "run").output
    assert "request_records_due: 0" in cli_run("retention", "status").output.replace("  ", "")
    events = as_json(cli_run("audit", "list", "--action", "retention.purged", "--json"))
    assert len(events) == 1 and events[0]["actor"] == "cli:tester"


def test_export_to_a_file(cli_run, account, tmp_path):
    target = tmp_path / "out.json"
    cli_run("export", "alan@example.com", "-o", str(target))
    doc = json.loads(target.read_text())
    export.validator().validate(doc)
    assert doc["account"]["id"] == account
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    stdout = cli_run("export", account).output
    export.validator().validate(json.loads(stdout))
    events = as_json(cli_run("audit", "list", "--action", "account.exported", "--json"))
    assert len(events) == 2 and events[0]["details"] == {"via": "cli"}


def test_export_of_an_unknown_account_fails_cleanly(cli_run, account):
    result = cli_run("export", "nobody@example.com", ok=False)
    assert "unknown account" in result.output


def test_erase_needs_confirmation_and_erases(cli_run, account):
    result = cli_run("accounts", "erase", account, input="n\n", ok=False)
    assert "aborted" in result.output
    assert f"erased account {account}" in cli_run("accounts", "erase", account, "--yes").output
    shown = as_json(cli_run("accounts", "show", account, "--json"))
    assert shown["status"] == "erased" and shown["email"] is None
    assert shown["name"].startswith("erased-")


def test_policy_show_and_publish(cli_run, account):
    text = cli_run("policy", "show").output
    assert "API request logs are retained for 90 days." in text
    assert "published policy version" in cli_run("policy", "publish").output
    assert "nothing to do" in cli_run("policy", "publish").output


def test_audit_head_and_verify(cli_run, account, tmp_path):
    head = as_json(cli_run("audit", "head", "--json"))
    n = head["seq"]
    assert n == 2 and len(head["hash"]) == 64  # user.created (init) + account.created
    assert cli_run("audit", "head").output.startswith(f"{n} {head['hash']}")
    assert "audit chain intact" in cli_run("audit", "verify").output
    head_file = tmp_path / "data" / "audit-head.log"
    lines = head_file.read_text().splitlines()
    # one line per commit that recorded events; the same head is never written twice
    assert len(lines) == n and f'"seq": {n}' in lines[-1]
    head_file.write_text("\n".join([*lines[:-1], lines[-1].replace(f'"seq": {n}',
                                                                    f'"seq": {n + 1}')]) + "\n")
    result = cli_run("audit", "verify", ok=False)
    assert "head file" in result.output


def test_notify_deliver_without_smtp(cli_run, account):
    result = cli_run("notify", "deliver", ok=False)
    assert "smtp.host is not configured" in result.output
    assert as_json(cli_run("notify", "deliver", "--json"))["disabled"] is True

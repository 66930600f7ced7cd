"""The `hushgate` CLI end to end with CliRunner, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from control.cli import cli


@pytest.fixture
def run(tmp_path, db_url, monkeypatch):
    cfg = tmp_path / "hushgate.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                   "database": {"url": db_url}, "auth": {"bcrypt_cost": 4}}))
    monkeypatch.setenv("HUSHGATE_ADMIN_PASSWORD", "a-long-enough-password")
    monkeypatch.setenv("HUSHGATE_ACTOR", "tester")
    runner = CliRunner()

    def _run(*args, ok=True, input=None):
        result = runner.invoke(cli, ["--config", str(cfg), *args], input=input,
                               catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code != 0, result.output
            assert "Traceback" not in result.output
            errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
            assert len(errors) == 1, result.output
        return result

    return _run


@pytest.fixture
def account(run):
    run("init")
    out = run("accounts", "create", "--name", "Alan Turing", "--email", "alan@example.com",
              "--adult", "--json").output
    return json.loads(out)["id"]


def test_init_twice_is_safe(run):
    first = run("init").output
    assert "created admin 'admin'" in first
    second = run("init").output
    assert "nothing else to do" in second


def test_commands_refuse_an_uninitialised_database(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "d")}))
    result = CliRunner().invoke(cli, ["--config", str(cfg), "accounts", "list"])
    assert result.exit_code == 1 and "run `hushgate init`" in result.output


def test_tour(run, account):
    key = json.loads(run("keys", "create", account, "--model", "sim-gpt", "--rpm", "60",
                         "--json").output)
    assert key["key"].startswith("hg_") and key["allowed_models"] == ["sim-gpt"]
    listed = run("keys", "list", "--json").output
    assert key["key"] not in listed and key["key_id"] in listed
    run("wallet", "topup", account, "12.50", "--idempotency-key", "inv-1")
    again = run("wallet", "topup", account, "12.50", "--idempotency-key", "inv-1").output
    assert "already applied" in again
    run("wallet", "adjust", account, "-0.5", "--reason", "discount error")
    bal = json.loads(run("wallet", "balance", account, "--json").output)
    assert bal["balance"] == 12_000_000 and bal["available"] == 12_000_000
    hist = json.loads(run("wallet", "history", account, "--json").output)
    assert [e["kind"] for e in hist] == ["adjustment", "topup"]
    rotated = json.loads(run("keys", "rotate", key["key_id"], "--json").output)
    assert rotated["rotated_from"] == key["key_id"]
    run("keys", "revoke", rotated["key_id"], "--reason", "test")
    shown = json.loads(run("accounts", "show", "alan@example.com", "--json").output)
    assert shown["id"] == account
    run("accounts", "update", account, "--company", "Bletchley", "--opt-out")
    events = json.loads(run("audit", "list", "--json", "--limit", "100").output)
    actions = [e["action"] for e in events]
    assert "account.preferences_updated" in actions and "key.rotated" in actions
    assert all(e["actor"] == "cli:tester" for e in events)
    assert "intact" in run("audit", "verify").output
    assert "deleted account" in run("accounts", "delete", account, "--yes").output


@pytest.mark.parametrize("args,message", [
    (("wallet", "topup", "nobody@example.com", "5"), "unknown account"),
    (("wallet", "topup", "ACCOUNT", "--", "-5"), "must be positive"),
    (("wallet", "topup", "ACCOUNT", "0"), "must not be zero"),
    (("wallet", "topup", "ACCOUNT", "0.0000001"), "fractional"),
    (("wallet", "topup", "ACCOUNT", "1.5", "--minor"), "fractional"),
    (("wallet", "topup", "ACCOUNT", "1e40"), "too large"),
    (("wallet", "topup", "ACCOUNT", "NaN"), "finite"),
    (("wallet", "topup", "ACCOUNT", "ten"), "not a number"),
    (("wallet", "adjust", "ACCOUNT", "5", "--reason", " "), "needs a reason"),
    (("accounts", "create", "--name", "B", "--email", "not-an-email", "--adult"), "malformed"),
    (("accounts", "create", "--name", "B", "--email", "b@example.com"), "18 or older"),
    (("accounts", "create", "--name", "B", "--email", "alan@example.com", "--adult"),
     "already exists"),
    (("keys", "create", "ACCOUNT", "--model", "gpt-99"), "unknown model 'gpt-99'"),
    (("keys", "create", "ACCOUNT", "--expires", "2001-01-01"), "expiry is in the past"),
    (("keys", "create", "ACCOUNT", "--expires", "someday"), "ISO 8601"),
    (("keys", "create", "ACCOUNT", "--expires", "9999-12-31T23:59:59-14:00"), "out of range"),
    (("wallet", "topup", "ACCOUNT", "5", "--reference", "r" * 101), "longer than 100"),
    (("keys", "revoke", "doesnotexist"), "unknown key"),
    (("accounts", "update", "ACCOUNT"), "nothing to update"),
])
def test_bad_input_is_one_line_and_writes_nothing(run, account, args, message):
    before = run("audit", "list", "--json", "--limit", "1000").output
    ledger = run("wallet", "history", account, "--json").output
    args = tuple(account if a == "ACCOUNT" else a for a in args)
    result = run(*args, ok=False)
    assert message in result.output
    assert run("audit", "list", "--json", "--limit", "1000").output == before
    assert run("wallet", "history", account, "--json").output == ledger


def test_wrong_config_is_one_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("proxy:\n  listen_port: -1\n")
    result = CliRunner().invoke(cli, ["--config", str(cfg), "accounts", "list"])
    assert result.exit_code == 1
    assert "proxy.listen_port" in result.output and "Traceback" not in result.output


def test_unreachable_database_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "d"),
                                   "database": {"url": "postgresql://nobody@127.0.0.1:1/x"}}))
    result = CliRunner().invoke(cli, ["--config", str(cfg), "accounts", "list"])
    assert result.exit_code == 1 and "cannot reach the database" in result.output


def test_users_totp_reset(run, tmp_path):
    """An operator who lost their device: `users totp-reset` turns the second factor off."""
    import pyotp

    from control.core import accounts, sessions, totp
    from control.core.audit import Actor
    from control.core.config import load_config
    from control.core.context import Ctx
    from control.core.db import Database

    run("init")
    config = load_config(tmp_path / "hushgate.yaml")
    db = Database.from_config(config)
    try:
        with db.transaction() as s:
            user_id = accounts.get_user_by_name(s, "admin").id
            ctx = Ctx(s, config, Actor("user", user_id))
            enrollment = totp.begin_enrollment(ctx, user_id)
            now = 1_900_000_005.0
            totp.confirm_enrollment(ctx, user_id, pyotp.TOTP(enrollment.secret).at(now),
                                    now=now)
        assert " 2fa " in run("users", "list").output
        assert json.loads(run("users", "list", "--json").output)[0]["totp_enabled"] is True

        assert "two-factor sign-in is off for admin" in run("users", "totp-reset", "admin").output
        assert "nothing to do" in run("users", "totp-reset", "admin").output
        assert "unknown user 'nobody'" in run("users", "totp-reset", "nobody", ok=False).output
        events = json.loads(run("audit", "list", "--action", "user.totp_disabled",
                                "--json").output)
        assert [(e["actor"], e["target_id"], e["details"]) for e in events] == [
            ("cli:tester", user_id, {"method": "reset"})]
        with db.transaction() as s:  # the password alone signs in again
            assert not sessions.sign_in(s, config, "user", "admin",
                                        "a-long-enough-password").needs_code
    finally:
        db.dispose()


def test_audit_head_on_a_damaged_head_file_is_one_line(run, tmp_path):
    run("init")
    run("audit", "head")
    head = tmp_path / "data" / "audit-head.log"
    head.write_text(head.read_text() + "not a head line\n")
    out = run("audit", "head", ok=False).output
    assert "audit head not anchored" in out


def test_disabling_an_account_from_the_cli_ends_its_sessions(run, tmp_path, db_url):
    """The rule lives in the service: the CLI gets it like the UI and the API, audited."""
    from sqlalchemy import select

    from control.core import sessions
    from control.core.db import Database
    from control.core.models import AuditEvent, WebSession

    run("init")
    aid = json.loads(run("accounts", "create", "--name", "Ada", "--email", "ada@example.com",
                         "--adult", "--json").output)["id"]
    db = Database(db_url)
    try:
        with db.transaction() as s:
            sessions.start(s, "account", aid)
        run("accounts", "update", aid, "--status", "disabled")
        with db.read_transaction() as s:
            assert s.scalar(select(WebSession.revoked_at)) is not None
            actions = list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))
        assert actions[-2:] == ["account.disabled", "session.revoked"]
        # Deleting ends sessions through the same audited function.
        with db.transaction() as s:
            sessions.start(s, "account", aid)
        run("accounts", "delete", aid, "--yes")
        with db.read_transaction() as s:
            assert s.scalar(select(WebSession.id).where(WebSession.revoked_at.is_(None))) \
                is None
            actions = list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))
        assert "session.revoked" in actions[-3:]
    finally:
        db.dispose()


def test_database_echo_goes_to_stderr_not_into_json(tmp_path, db_url, monkeypatch):
    """`database.echo: true` logs SQL statements on stderr, never their parameters, and
    leaves `--json` on stdout parseable (SQLAlchemy's own echo writes to stdout)."""
    import subprocess
    import sys
    from pathlib import Path

    cfg = tmp_path / "echo.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                   "database": {"url": db_url, "echo": True},
                                   "auth": {"bcrypt_cost": 4}}))
    hushgate = str(Path(sys.executable).with_name("hushgate"))
    env = {**__import__("os").environ, "HUSHGATE_ADMIN_PASSWORD": "a-long-enough-password"}

    def cli_json(*args):
        done = subprocess.run([hushgate, "--config", str(cfg), *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), done.stderr

    subprocess.run([hushgate, "--config", str(cfg), "init"], env=env, check=True,
                   capture_output=True, timeout=120)
    made, _ = cli_json("accounts", "create", "--name", "Echo Person", "--email",
                       "echo.person@example.com", "--adult", "--json")
    listed, err = cli_json("accounts", "list", "--json")
    assert any(a["id"] == made["id"] for a in listed)
    assert "SELECT" in err
    assert "echo.person@example.com" not in err and "Echo Person" not in err


def test_users_set_password_and_delete(run):
    run("init")
    run("users", "create", "ops", "--role", "admin", "--password-file", "-",
        input="ops password one\n")
    assert "sessions have ended" in run("users", "set-password", "ops", "--password-file", "-",
                                        input="ops password two\n").output
    refused = run("users", "delete", "ops", ok=False)
    assert "--yes" in refused.output
    assert "deleted operator ops" in run("users", "delete", "ops", "--yes").output
    last = run("users", "delete", "admin", "--yes", ok=False)
    assert "the last admin cannot be deleted" in last.output
    unknown = run("users", "delete", "nobody", "--yes", ok=False)
    assert "unknown operator" in unknown.output
    actions = [e["action"] for e in json.loads(run("audit", "list", "--json").output)]
    assert "user.password_changed" in actions and "user.deleted" in actions


def test_accounts_invite_queues_a_link_once_per_passwordless_account(run, account):
    out = run("accounts", "invite", account).output
    assert f"invitation queued for account {account}" in out
    again = run("accounts", "create", "--name", "Ada", "--email", "ada@example.com", "--adult",
                "--invite", "--json").output
    ada = json.loads(again)["id"]
    actions = [e["action"] for e in json.loads(run("audit", "list", "--json").output)]
    assert actions.count("account.invited") == 2
    assert "unknown" in run("accounts", "invite", "nobody@example.com", ok=False).output.lower()
    assert ada


def test_start_warns_while_the_policy_names_placeholders(config, capsys):
    from control.cli.runtime import warn_placeholder_policy
    from control.core.config import load_config

    warn_placeholder_policy(config)
    assert "placeholder details (policy.operator_name, policy.contact_email)" in \
        capsys.readouterr().err
    real = load_config(overrides={**config.raw, "policy": {
        **config.raw["policy"], "operator_name": "Acme AI",
        "contact_email": "privacy@acme-ai.com"}})
    warn_placeholder_policy(real)
    assert capsys.readouterr().err == ""

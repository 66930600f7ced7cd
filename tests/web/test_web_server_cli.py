"""ControlServer (waitress on port 0), listen-address policy, and the control-plane CLI."""

from __future__ import annotations

import urllib.error
import urllib.request

import click
import pytest
import yaml
from click.testing import CliRunner
from web_helpers import config_with, sqlite_only

from control.cli.common import HushgateGroup, State
from control.cli.web import COMMANDS
from control.core.errors import ConfigError
from control.web.server import ControlServer, check_listen


@sqlite_only
def test_control_server_serves_and_stops(config, db):
    server = ControlServer(config, host="127.0.0.1", port=0, db=db).start()
    try:
        assert server.port > 0
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
            assert resp.headers["Server"] == "hushgate"
        with urllib.request.urlopen(f"{server.url}/admin/login", timeout=10) as resp:
            assert "hushgate_session=" in resp.headers["Set-Cookie"]
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/healthz", timeout=2)


@sqlite_only
def test_listen_policy(config):
    check_listen(config, "127.0.0.1")
    check_listen(config, "::1")
    with pytest.raises(ConfigError, match="not loopback"):
        check_listen(config, "0.0.0.0")
    check_listen(config_with(config, control={"allow_plain_http": True}), "0.0.0.0")
    tls = config_with(config, control={"tls": {"cert_file": "c.pem", "key_file": "k.pem"}})
    with pytest.raises(ConfigError, match="does not terminate TLS"):
        check_listen(tls, "127.0.0.1")


@pytest.fixture
def cli(config, tmp_path):
    path = tmp_path / "hushgate.yaml"
    raw = {"data_dir": str(config.data_dir), "database": {"url": config.database_url},
           "auth": {"bcrypt_cost": 4}}
    path.write_text(yaml.safe_dump(raw))

    @click.group(cls=HushgateGroup)
    @click.pass_context
    def root(ctx: click.Context) -> None:
        ctx.obj = State(str(path))
        ctx.call_on_close(ctx.obj.close)

    for command in COMMANDS:
        root.add_command(command)
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(root, list(args), catch_exceptions=False, **kw)


def test_users_and_tokens_cli(cli, db):
    r = cli("users", "create", "alice", "--role", "admin", "--password", "alice password 1")
    assert r.exit_code == 0, r.output
    assert cli("users", "create", "alice", "--password", "alice password 1").exit_code == 1
    assert cli("users", "create", "bo", "--password", "x" * 12).exit_code == 1  # bad name
    assert "alice" in cli("users", "list").output
    r = cli("tokens", "create", "alice", "--scope", "write", "--json")
    assert r.exit_code == 0
    import json

    token = json.loads(r.output)
    assert token["token"].startswith("hga_") and token["scope"] == "write"
    listed = cli("tokens", "list").output
    assert token["key_id"] in listed and token["token"] not in listed
    assert cli("tokens", "create", "nobody").exit_code == 1
    assert cli("tokens", "revoke", token["key_id"]).exit_code == 0
    assert "revoked" in cli("tokens", "list", "--user", "alice").output
    assert cli("tokens", "revoke", "nope").exit_code == 1

"""The admin UI and the API give the same audit verdict as `hushgate audit verify`."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from control.cli import cli


def test_the_ui_and_the_api_show_the_cli_verdict(admin, api, read_token, config, tmp_path,
                                                   db_url):
    cfg = tmp_path / "hushgate.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(config.data_dir),
                                   "database": {"url": db_url}, "auth": {"bcrypt_cost": 4}}))

    def cli_verify():
        return CliRunner().invoke(cli, ["--config", str(cfg), "audit", "verify"])

    assert api("GET", "/audit/verify", token=read_token).get_json()["ok"] is True
    assert cli_verify().exit_code == 0
    config.audit_head_path().unlink()  # the head file is gone
    result = cli_verify()
    assert result.exit_code == 1 and "no head record vouches" in result.output
    body = api("GET", "/audit/verify", token=read_token).get_json()
    assert body["ok"] is False and body["problem"] in result.output
    page = admin.get("/admin/audit/verify", follow_redirects=True).get_data(as_text=True)
    assert "verification FAILED" in page and "no head record vouches" in page

"""Configuration loading and validation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from control.core.config import DEFAULTS, load_config, validate_config_dict
from control.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_is_valid_and_documents_every_key():
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    validate_config_dict(example)

    def keys(d, prefix=""):
        for k, v in d.items():
            yield prefix + k
            if isinstance(v, dict):
                yield from keys(v, prefix + k + ".")

    assert set(keys(DEFAULTS)) - {"providers", "models"} <= set(keys(example))


def test_defaults_run_on_sqlite_in_a_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HUSHGATE_CONFIG", raising=False)
    monkeypatch.delenv("HUSHGATE_DATABASE_URL", raising=False)
    cfg = load_config()
    assert cfg.database_url == f"sqlite:///{tmp_path / 'hushgate-data' / 'hushgate.db'}"
    assert cfg.retention == {**DEFAULTS["retention"]}
    assert set(cfg.models) == {"sim-gpt", "sim-embed", "sim-claude"}


@pytest.mark.parametrize("text,message", [
    ("proxy:\n  listen_port: 99999\n", "proxy.listen_port: 99999 is invalid"),
    ("proxy:\n  lisen_port: 1\n", "unknown key proxy.lisen_port"),
    ("retention:\n  request_records_days: 0\n", "retention.request_records_days: 0"),
    ("privacy:\n  client_ip: full\n", "privacy.client_ip: 'full' is invalid"),
    ("[1, 2]\n", "must be a mapping"),
    ("proxy: [\n", "not valid YAML at line"),
    ("models:\n  - name: m\n    provider: nope\n    prices: {input: 1, output: 1}\n",
     "unknown provider 'nope'"),
    ("models:\n  - name: m\n    provider: x\n    prices: {input: 1.5, output: 1}\n"
     "providers:\n  - {name: x, base_url: 'http://h', api_format: openai}\n",
     "models.0.prices.input: 1.5 is invalid"),
    ("providers:\n  - {name: x, base_url: 'ftp://h', api_format: openai}\n",
     "providers.0.base_url"),
    ("openai_api_key: sk-123\n", "unknown key openai_api_key"),
    ("providers:\n  - {name: x, base_url: 'https://h', api_format: openai, verify_tls: false}\n",
     "providers.x.verify_tls: hushgate always verifies provider TLS"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert "sk-123" not in str(err.value)


def test_missing_file_is_a_readable_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_generated_secrets_are_private_and_stable(tmp_path, monkeypatch):
    monkeypatch.delenv("HUSHGATE_AUDIT_HMAC_KEY", raising=False)
    cfg = load_config(overrides={"data_dir": str(tmp_path / "d")})
    key = cfg.audit_hmac_key()
    path = tmp_path / "d" / "audit-hmac.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_config(overrides={"data_dir": str(tmp_path / "d")}).audit_hmac_key() == key
    monkeypatch.setenv("HUSHGATE_AUDIT_HMAC_KEY", "e" * 40)
    assert load_config(overrides={"data_dir": str(tmp_path / "d")}).audit_hmac_key() == b"e" * 40


def test_provider_key_is_read_from_env_at_call_time(monkeypatch):
    cfg = load_config(overrides={"providers": [{"name": "p", "base_url": "https://x",
                                                "api_format": "openai", "key_env": "PK"}],
                                 "models": []})
    monkeypatch.delenv("PK", raising=False)
    assert cfg.providers["p"].api_key() is None
    monkeypatch.setenv("PK", "sk-live")
    assert cfg.providers["p"].api_key() == "sk-live"

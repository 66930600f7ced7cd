"""The container image and the compose stack, built and run here with Debian's podman.

Builds the image (deploy/container/build-image.sh: an mmdebstrap base, wheels made here),
starts compose.yaml's stack with podman-compose (control plane, proxy, PostgreSQL, Redis and
the demo simulator; PostgreSQL and Redis from stand-in images of Debian's packages, since no
image registry is reachable), makes a streamed request through the proxy with the openai
SDK, checks the charge, the doctor and the metrics inside the stack, and takes it all down.

Marked ``container``: deselected by default (pyproject addopts); `.ci/run` runs it when
podman can run a container on the host.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.core import metrics

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "container"
IMAGE = "localhost/hushgate:dev"
SERVICES_BASE = "localhost/hushgate-services-base:trixie"
SERVICES = "localhost/hushgate-standin-services:trixie"


def podman_env() -> dict[str, str]:
    """The environment deploy/container/podman-env.sh sets up (CONTAINERS_CONF)."""
    out = subprocess.run(["bash", "-c", f". {ROOT}/deploy/container/podman-env.sh && env -0"],
                         check=True, capture_output=True).stdout
    env = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    return {**os.environ, "CONTAINERS_CONF": env["CONTAINERS_CONF"]}


def run(*args: str, env: dict[str, str], timeout: float = 900, check: bool = True,
        **kw) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), env=env, capture_output=True, text=True,
                            timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])}… exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def build_images(env: dict[str, str]) -> None:
    run("bash", str(ROOT / "deploy" / "container" / "build-image.sh"), IMAGE, env=env)
    if run("podman", "image", "exists", SERVICES, env=env, check=False).returncode == 0:
        return
    if run("podman", "image", "exists", SERVICES_BASE, env=env, check=False).returncode:
        tar = Path(os.environ.get("TMPDIR", "/var/tmp")) / f"hg-services-{os.getpid()}.tar"
        try:
            run("mmdebstrap", "--quiet", "--variant=minbase",
                "--include=postgresql,redis-server,tini", "--format=tar", "trixie", str(tar),
                os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian"), env=env)
            run("podman", "import", "--quiet", str(tar), SERVICES_BASE, env=env)
        finally:
            tar.unlink(missing_ok=True)
    run("podman", "build", "--quiet", "--format", "docker", "--build-arg",
        f"BASE={SERVICES_BASE}", "-f", str(HERE / "Containerfile.services"), "-t", SERVICES,
        str(HERE), env=env)


def wait_for(url: str, deadline: float, headers: dict[str, str] | None = None) -> bytes:
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200:
                    return resp.read()
        except OSError as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{url} did not answer: {last!r}")


@pytest.fixture
def stack(port_factory) -> Iterator[dict[str, object]]:
    env = podman_env()
    build_images(env)
    compose = shutil.which("podman-compose") or str(Path(sys.executable).parent /
                                                    "podman-compose")
    project = f"hgtest{secrets.token_hex(3)}"
    ports = {"proxy": port_factory(), "control": port_factory()}
    env.update({
        "HUSHGATE_IMAGE": IMAGE, "HUSHGATE_POSTGRES_IMAGE": SERVICES,
        "HUSHGATE_REDIS_IMAGE": SERVICES, "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
        "HUSHGATE_ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "HUSHGATE_METRICS_TOKEN": secrets.token_urlsafe(16),
        "HUSHGATE_PROXY_PUBLISH": str(ports["proxy"]),
        "HUSHGATE_CONTROL_PUBLISH": str(ports["control"])})
    base = [compose, "--project-name", project, "-f", str(ROOT / "compose.yaml"),
            "--profile", "demo"]
    try:
        run(*base, "up", "-d", env=env, timeout=600, cwd=ROOT)
        yield {"env": env, "project": project, "ports": ports, "compose": base}
    finally:
        logs = run(*base, "logs", env=env, check=False, cwd=ROOT, timeout=120)
        print(logs.stdout[-5000:], logs.stderr[-2000:])
        run(*base, "down", "-v", "-t", "20", env=env, check=False, cwd=ROOT, timeout=300)
        left = run("podman", "ps", "-a", "--filter", f"name={project}", "--format",
                   "{{.Names}}", env=env, check=False).stdout.split()
        assert not left, f"containers left behind: {left}"


def test_compose_stack_serves_a_streamed_request(stack) -> None:
    import openai

    env, project, ports = stack["env"], stack["project"], stack["ports"]
    deadline = time.monotonic() + 240
    wait_for(f"http://127.0.0.1:{ports['control']}/healthz", deadline)
    wait_for(f"http://127.0.0.1:{ports['proxy']}/healthz", deadline)

    def hushgate(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("podman", "exec", f"{project}_control_1", "hushgate", *args, env=env,
                   timeout=120, check=check)

    account = json.loads(hushgate("accounts", "create", "--name", "Ada", "--email",
                                  "ada@example.com", "--adult", "--json").stdout)["id"]
    hushgate("wallet", "topup", account, "5")
    key = json.loads(hushgate("keys", "create", account, "--json").stdout)["key"]

    with openai.OpenAI(base_url=f"http://127.0.0.1:{ports['proxy']}/v1", api_key=key,
                       max_retries=0) as client, client.chat.completions.create(
            model="sim-gpt", messages=[{"role": "user", "content": "hello"}],
            stream=True) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip()

    # charged exactly once, on PostgreSQL: balance == Σ ledger; no per-request hold is left
    # open: all that is held is the running proxy's balance lease (escrow)
    balance = json.loads(hushgate("wallet", "balance", account, "--json").stdout)
    history = json.loads(hushgate("wallet", "history", account, "--json").stdout)
    assert balance["held"] == balance["leased"]
    assert balance["available"] == balance["balance"] - balance["held"]
    assert 0 < balance["balance"] < 5_000_000
    assert balance["balance"] == sum(e["amount"] for e in history)

    # the doctor, in the proxy's container (its own listener on loopback), finds nothing that
    # fails (plain HTTP to "proxy:8080" from another container would: not loopback)
    doctor = run("podman", "exec", f"{project}_proxy_1", "hushgate", "doctor", "--json",
                 "--url-proxy", "http://127.0.0.1:8080", env=env, timeout=120, check=False)
    checks = json.loads(doctor.stdout[:doctor.stdout.rindex("]") + 1])
    assert [c for c in checks if c["status"] == "fail"] == [], checks
    assert {c["name"]: c["status"] for c in checks}["database"] == "pass"

    # the control plane's metrics, with the bearer token (the host is not loopback to it)
    body = wait_for(f"http://127.0.0.1:{ports['control']}/metrics", deadline, headers={
        "Authorization": f"Bearer {env['HUSHGATE_METRICS_TOKEN']}"})
    s = metrics.parse(body)
    assert s.get("hushgate_accounts", status="active") == 1
    assert s.get("hushgate_wallet_balance_minor_units") == balance["balance"]

    # read-only root, unprivileged user, private data folder
    info = run("podman", "inspect", f"{project}_proxy_1", env=env).stdout
    assert json.loads(info)[0]["HostConfig"]["ReadonlyRootfs"] is True
    who = run("podman", "exec", f"{project}_proxy_1", "sh", "-c",
              "id -u; stat -c %a /var/lib/hushgate", env=env).stdout.split()
    assert who == ["10001", "700"]

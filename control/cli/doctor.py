"""`hushgate doctor`: check a configuration and a running deployment against the policy."""

from __future__ import annotations

import click

from control.cli.common import emit_json, json_option, state
from control.core import doctor

MARKS = {doctor.PASS: "PASS", doctor.WARN: "WARN", doctor.FAIL: "FAIL", doctor.SKIP: "SKIP"}


@click.command("doctor")
@click.option("--url-proxy", "proxy_url", metavar="URL",
              help="Also check a running proxy at this base URL (its /healthz).")
@click.option("--url-control", "control_url", metavar="URL",
              help="Also check a running control plane at this base URL (its /healthz).")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False),
              help="CA bundle for HTTPS URLs signed by a private CA.")
@json_option
def doctor_command(proxy_url: str | None, control_url: str | None, cafile: str | None,
                   as_json: bool) -> None:
    """Check TLS, file permissions, the audit chain and its anchor, the retention scheduler,
    provider keys, SMTP, the clocks and the database; one line per check with the fix.
    Exits 1 if any check fails."""
    checks = doctor.run_checks(state().config, proxy_url=proxy_url, control_url=control_url,
                               cafile=cafile)
    if as_json:
        emit_json([c.as_dict() for c in checks])
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            line = f"{MARKS[c.status]}  {c.name:<{width}}  {c.detail}"
            if c.fix:
                line += f" -> fix: {c.fix}"
            click.echo(line)
    bad = doctor.failed(checks)
    if bad:
        raise click.ClickException(f"{len(bad)} of {len(checks)} checks failed: "
                                   + ", ".join(c.name for c in bad))
    if not as_json:
        click.echo(f"all {len(checks)} checks passed or only warn")


COMMANDS: list[click.Command] = [doctor_command]

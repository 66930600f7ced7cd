"""`hushgate retention|export|policy|notify …` — the privacy lifecycle."""

from __future__ import annotations

import os
import sys

import click

from control.cli.common import emit_json, group, json_option, state
from control.core import export, notify, policy, retention

retention_group = group("retention", "Purge data past its retention window.")


@retention_group.command("run")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
@json_option
def retention_run(dry_run: bool, as_json: bool) -> None:
    """Purge expired request records and audit events, erase deleted accounts past the grace
    window, release expired holds. Audited (except a dry run)."""
    st = state()
    report = retention.run_retention(st.require_schema(), st.config, dry_run=dry_run,
                                     actor=st.actor)
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(f"retention: {report}")
    if report.head_problem:
        raise click.ClickException(f"audit head not anchored: {report.head_problem}")


@retention_group.command("status")
@json_option
def retention_status(as_json: bool) -> None:
    """What is due for removal, the oldest data, and the configured windows."""
    st = state()
    with st.reader() as session:
        data = retention.retention_status(session, st.config)
    if as_json:
        emit_json({"windows": st.config.retention, "status": data})
        return
    r = st.config.retention
    click.echo(f"windows: request records {r['request_records_days']} d, audit events "
               f"{r['audit_events_days']} d, deleted accounts erased after "
               f"{r['deleted_account_erasure_days']} d, ledger forever")
    for k, v in data.items():
        click.echo(f"{k:>32}: {'-' if v is None else v}")


@click.command("export")
@click.argument("account")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file (created with mode 0600) instead of standard output.")
def export_command(account: str, output: str | None) -> None:
    """Export everything held about ACCOUNT (id or email) as one JSON document."""
    st = state()
    with st.unit_of_work() as ctx:
        account_id = export.audit_export(ctx, account, via="cli")
    with st.reader() as session:
        if output:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                export.write_export(session, st.config, account_id, fh)
            click.echo(f"exported account {account_id} to {output}", err=True)
        else:
            export.write_export(session, st.config, account_id, sys.stdout)
            sys.stdout.write("\n")


policy_group = group("policy", "Show and publish the privacy policy.")


@policy_group.command("show")
def policy_show() -> None:
    """Print the privacy policy rendered from the running configuration."""
    st = state()
    with st.reader() as session:
        click.echo(policy.render_policy(st.config, session=session))


@policy_group.command("publish")
@click.option("--notes", help="What changed (kept with the version).")
def policy_publish(notes: str | None) -> None:
    """Record the current text as a new version if it changed, date it today and queue a
    policy-changed notice to every account."""
    with state().unit_of_work() as ctx:
        version = policy.publish_policy(ctx, notes=notes)
        summary = (f"published policy version {version.id} dated {version.last_updated}"
                   if version else "the published policy is current; nothing to do")
    click.echo(summary)


notify_group = group("notify", "Deliver queued messages to account holders.")


@notify_group.command("deliver")
@click.option("--limit", type=click.IntRange(1, 100000), default=500, show_default=True)
@json_option
def notify_deliver(limit: int, as_json: bool) -> None:
    """Send queued messages over SMTP (config `smtp`)."""
    st = state()
    report = notify.deliver_pending(st.require_schema(), st.config, limit=limit)
    if as_json:
        emit_json(report.as_dict())
        return
    if report.disabled:
        raise click.ClickException("smtp.host is not configured; messages stay queued")
    click.echo(f"sent {report.sent}, skipped {report.skipped}, retrying {report.retrying}, "
               f"failed {report.failed}")


COMMANDS = [retention_group, export_command, policy_group, notify_group]

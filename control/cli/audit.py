"""`hushgate audit …`"""

from __future__ import annotations

from pathlib import Path

import click

from control.cli.common import emit_json, group, json_option, state
from control.core import audit, audit_head

audit_group = group("audit", "Read and verify the immutable audit history.")


@audit_group.command("list")
@click.option("--action", type=click.Choice([a.value for a in audit.Action]))
@click.option("--target", "target_id", help="Only events about this id.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
def list_(action: str | None, target_id: str | None, limit: int, as_json: bool) -> None:
    """Audit events, newest first."""
    with state().reader() as session:
        rows = [audit.event_dict(e) for e in
                audit.list_events(session, limit=limit, action=action, target_id=target_id)]
    if as_json:
        emit_json(rows)
        return
    for e in rows:
        target = f"{e['target_type']}:{e['target_id']}" if e["target_type"] else "-"
        click.echo(f"{e['seq']:>6}  {e['created_at'][:19]}  {e['action']:<26} {target:<44} "
                   f"{e['actor']}")
    if not rows:
        click.echo("no audit events")


@audit_group.command("verify")
@click.option("--anchors", "anchors_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check the chain against heads collected from the external anchor "
                   "sink (syslog lines, a log-service export, head-file lines).")
@json_option
def verify(anchors_file: Path | None, as_json: bool) -> None:
    """Check the audit history: the HMAC chain, the signed state, the head file (and with
    --anchors the external heads); exit 1 with the first problem. Anchors the head."""
    st = state()
    result = audit.verdict(st.require_schema(), st.config, anchors_file=anchors_file)
    if as_json:
        emit_json(result.__dict__)
    if not result.ok:
        raise click.ClickException(f"audit chain broken: {result.problem}")
    if not as_json:
        click.echo(f"audit chain intact: {result.checked} events, head {result.head_seq} "
                   f"{result.head_hash[:16]}")


@audit_group.command("head")
@json_option
def head(as_json: bool) -> None:
    """Print the chain head (event count and hash) and append it to the head file. Copy the
    line somewhere outside this host to anchor it: a later verify then proves nothing was
    removed from the end up to that point."""
    st = state()
    try:
        entry = audit.anchor(st.require_schema(), st.config)
    except audit_head.HeadFileError as exc:
        raise click.ClickException(f"audit head not anchored: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"audit head not anchored: {exc.strerror}") from None
    if as_json:
        emit_json(entry.as_dict())
        return
    click.echo(f"{entry.seq} {entry.hash} {entry.at}")


COMMANDS = [audit_group]

"""`hushgate audit …`"""

from __future__ import annotations

import click

from control.cli.common import emit_json, group, json_option, state
from control.core import audit

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
@json_option
def verify(as_json: bool) -> None:
    """Recompute the HMAC chain; exit 1 naming the first bad event if anything was changed."""
    st = state()
    with st.reader() as session:
        result = audit.verify(session, st.config.audit_hmac_key())
    if as_json:
        emit_json(result.__dict__)
    if not result.ok:
        raise click.ClickException(f"audit chain broken: {result.problem}")
    if not as_json:
        click.echo(f"audit chain intact: {result.checked} events, head {result.head_seq} "
                   f"{result.head_hash[:16]}")


COMMANDS = [audit_group]

"""`hushgate keys …`"""

from __future__ import annotations

from datetime import datetime

import click

from control.cli.common import emit_json, group, json_option, state
from control.core import accounts, keys, validation
from control.core.money import parse_amount

keys_group = group("keys", "Issue, list, revoke and rotate API keys.")


def _parse_expiry(value: str | None) -> datetime | None:
    """The same rule as the API and the UI (``control.core.validation``)."""
    return validation.parse_datetime(value, "expires")


@keys_group.command("create")
@click.argument("account")
@click.option("--name", help="A label for the key.")
@click.option("--model", "models", multiple=True, help="Allowed model (repeat). Default: all.")
@click.option("--expires", help="Expiry, ISO 8601 (e.g. 2027-01-31 or 2027-01-31T12:00Z).")
@click.option("--rpm", type=int, help="Requests per minute limit.")
@click.option("--tpm", type=int, help="Tokens per minute limit.")
@click.option("--budget", help="Spending cap for this key, in major currency units.")
@json_option
def create(account: str, name: str | None, models: tuple[str, ...], expires: str | None,
           rpm: int | None, tpm: int | None, budget: str | None, as_json: bool) -> None:
    """Issue a key. The full key is printed once and cannot be shown again."""
    st = state()
    w = st.config.wallet
    budget_minor = (parse_amount(budget, scale=w["minor_unit_scale"], max_amount=w["max_amount"],
                                 field="budget") if budget is not None else None)
    with st.unit_of_work() as ctx:
        a = accounts.get_account(ctx.session, account)
        key, raw = keys.create_key(ctx, a.id, name=name, allowed_models=list(models) or None,
                                   expires_at=_parse_expiry(expires), rpm_limit=rpm,
                                   tpm_limit=tpm, budget=budget_minor)
        data = keys.key_dict(key)
    if as_json:
        emit_json({**data, "key": raw})
        return
    click.echo(f"created key {data['key_id']} for account {data['account_id']}")
    click.echo(raw)
    click.echo("store it now: hushgate keeps only a hash and cannot show it again", err=True)


@keys_group.command("list")
@click.option("--account", help="Only this account's keys (id or email).")
@click.option("--active", is_flag=True, help="Hide revoked keys.")
@json_option
def list_(account: str | None, active: bool, as_json: bool) -> None:
    """List keys (display prefix only, never secrets)."""
    with state().reader() as session:
        account_id = accounts.get_account(session, account).id if account else None
        rows = [keys.key_dict(k) for k in
                keys.list_keys(session, account_id, include_revoked=not active)]
    if as_json:
        emit_json(rows)
        return
    for k in rows:
        scope = ",".join(k["allowed_models"]) if k["allowed_models"] else "all models"
        click.echo(f"{k['key_id']}  {k['status']:<7}  {k['prefix']}  {k['account_id']}  {scope}")
    if not rows:
        click.echo("no keys")


@keys_group.command("revoke")
@click.argument("key_id")
@click.option("--reason", help="Why (kept in the audit log).")
def revoke(key_id: str, reason: str | None) -> None:
    """Revoke a key now (every proxy refuses it within ~1 second)."""
    with state().unit_of_work() as ctx:
        keys.revoke_key(ctx, key_id, reason=reason)
    click.echo(f"revoked key {key_id}")


@keys_group.command("rotate")
@click.argument("key_id")
@click.option("--grace", "grace_seconds", type=click.IntRange(0, 30 * 86400), default=0,
              show_default=True, help="Seconds the old key keeps working.")
@json_option
def rotate(key_id: str, grace_seconds: int, as_json: bool) -> None:
    """Replace a key with a new one with the same scopes."""
    with state().unit_of_work() as ctx:
        new, raw = keys.rotate_key(ctx, key_id, grace_seconds=grace_seconds)
        data = keys.key_dict(new)
    if as_json:
        emit_json({**data, "key": raw})
        return
    when = f"in {grace_seconds} s" if grace_seconds else "now"
    click.echo(f"rotated {key_id} -> {data['key_id']}; the old key stops working {when}")
    click.echo(raw)


COMMANDS = [keys_group]

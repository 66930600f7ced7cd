"""`hushgate accounts …`"""

from __future__ import annotations

import click

from control.cli.common import emit_json, group, json_option, state
from control.core import accounts, passwords, wallet
from control.core.money import format_amount

accounts_group = group("accounts", "Create, inspect, correct and delete accounts.")


@accounts_group.command("create")
@click.option("--name", required=True)
@click.option("--email", required=True)
@click.option("--company")
@click.option("--adult", "adult_attested", is_flag=True,
              help="The account holder attests being 18 or older (required).")
@click.option("--opt-out", is_flag=True, help="Opt out of non-essential communications.")
@click.option("--invite", is_flag=True,
              help="E-mail the holder a single-use link to set their portal password.")
@json_option
def create(name: str, email: str, company: str | None, adult_attested: bool, opt_out: bool,
           invite: bool, as_json: bool) -> None:
    """Create an account (with an empty wallet)."""
    with state().unit_of_work() as ctx:
        account = accounts.create_account(ctx, name=name, email=email, company=company,
                                          adult_attested=adult_attested,
                                          opt_out_non_essential=opt_out)
        if invite:
            passwords.invite_account(ctx, account.id)
        data = accounts.account_dict(account)
    if as_json:
        emit_json(data)
    else:
        click.echo(f"created account {data['id']} ({data['email']})")


@accounts_group.command("list")
@click.option("--search", help="Match name, email, company or id.")
@click.option("--status", type=click.Choice(["active", "disabled", "deleted", "erased"]))
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@json_option
def list_(search: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List accounts, newest first."""
    with state().reader() as session:
        rows = [accounts.account_dict(a) for a in
                accounts.list_accounts(session, search=search, status=status, limit=limit)]
    if as_json:
        emit_json(rows)
        return
    for a in rows:
        click.echo(f"{a['id']}  {a['status']:<8}  {a['email'] or '-':<32}  {a['name'] or '-'}")
    if not rows:
        click.echo("no accounts")


@accounts_group.command("show")
@click.argument("account")
@json_option
def show(account: str, as_json: bool) -> None:
    """Show one account (by id or email) with its balance."""
    st = state()
    with st.reader() as session:
        a = accounts.get_account(session, account)
        data = accounts.account_dict(a)
        bal = wallet.get_balance(session, a.id)
    scale, cur = st.config.wallet["minor_unit_scale"], st.config.wallet["currency"]
    data.update(balance=bal.balance, held=bal.held, leased=bal.leased,
                available=bal.available)
    if as_json:
        emit_json(data)
        return
    for k in ("id", "name", "email", "company", "status", "created_at", "deleted_at"):
        click.echo(f"{k:>10}: {data[k] if data[k] is not None else '-'}")
    click.echo(f"{'balance':>10}: {format_amount(bal.balance, scale, cur)} "
               f"(available {format_amount(bal.available, scale, cur)})")


@accounts_group.command("update")
@click.argument("account")
@click.option("--name")
@click.option("--email")
@click.option("--company")
@click.option("--status", type=click.Choice(["active", "disabled"]))
@click.option("--opt-out/--opt-in", default=None,
              help="Communication preference for non-essential messages.")
def update(account: str, name: str | None, email: str | None, company: str | None,
           status: str | None, opt_out: bool | None) -> None:
    """Correct profile fields, disable/enable, or change preferences."""
    if not any(v is not None for v in (name, email, company, status, opt_out)):
        raise click.UsageError("nothing to update: give --name, --email, --company, --status "
                               "or --opt-out/--opt-in")
    with state().unit_of_work() as ctx:
        a = accounts.get_account(ctx.session, account)
        accounts.update_account(ctx, a.id, name=name, email=email, company=company)
        if status:
            accounts.set_account_status(ctx, a.id, status)
        if opt_out is not None:
            accounts.set_preferences(ctx, a.id, opt_out_non_essential=opt_out)
        account_id = a.id
    click.echo(f"updated account {account_id}")


@accounts_group.command("invite")
@click.argument("account")
def invite(account: str) -> None:
    """E-mail ACCOUNT (id or e-mail) a single-use link to set its first portal password
    (accounts created here have none). Audited."""
    with state().unit_of_work() as ctx:
        a = accounts.get_account(ctx.session, account)
        token = passwords.invite_account(ctx, a.id)
        account_id, expires = a.id, token.expires_at
    click.echo(f"invitation queued for account {account_id}; the link works once, until "
               f"{expires:%Y-%m-%d %H:%M} UTC")


@accounts_group.command("delete")
@click.argument("account")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(account: str, yes: bool) -> None:
    """Delete an account: access ends now; personal data is erased after the grace window."""
    st = state()
    if not yes and not click.confirm(f"delete account {account}?", default=False):
        raise click.ClickException("aborted")
    with st.unit_of_work() as ctx:
        a = accounts.delete_account(ctx, accounts.get_account(ctx.session, account).id)
        account_id = a.id
    days = st.config.retention["deleted_account_erasure_days"]
    click.echo(f"deleted account {account_id}; personal data will be erased within {days} days")


@accounts_group.command("erase")
@click.argument("account")
@click.option("--yes", is_flag=True, help="Confirm: erasure is irreversible.")
def erase(account: str, yes: bool) -> None:
    """Erase an account's personal data now (deleting it first if needed). Ledger entries and
    statistics stay, linked to a random surrogate."""
    from control.core import erasure

    if not yes and not click.confirm(f"erase account {account}? This cannot be undone",
                                     default=False):
        raise click.ClickException("aborted")
    with state().unit_of_work() as ctx:
        a = erasure.erase_account(ctx, accounts.get_account(ctx.session, account).id,
                                  confirm=True)
        account_id = a.id
    click.echo(f"erased account {account_id}")


COMMANDS = [accounts_group]

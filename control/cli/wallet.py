"""`hushgate wallet …`"""

from __future__ import annotations

import click

from control.cli.common import emit_json, group, json_option, state
from control.core import accounts, validation, wallet
from control.core.money import format_amount, parse_amount

wallet_group = group("wallet", "Top up, adjust and inspect prepaid wallets.")
minor_option = click.option("--minor", is_flag=True,
                            help="AMOUNT is an integer of minor units, not major units.")


def _amount(text: str, minor: bool, allow_negative: bool = False) -> int:
    w = state().config.wallet
    return parse_amount(text, scale=w["minor_unit_scale"], max_amount=w["max_amount"],
                        minor=minor, allow_negative=allow_negative)


def _fmt(amount: int) -> str:
    w = state().config.wallet
    return format_amount(amount, w["minor_unit_scale"], w["currency"])


@wallet_group.command("topup")
@click.argument("account")
@click.argument("amount")
@click.option("--idempotency-key", help="Retry-safe: the same key credits once.")
@click.option("--reference", help="External reference (invoice, receipt).")
@minor_option
def topup(account: str, amount: str, idempotency_key: str | None, reference: str | None,
          minor: bool) -> None:
    """Credit AMOUNT (e.g. 25 or 12.50) to an account's wallet."""
    value = _amount(amount, minor)
    if reference is not None:
        validation.check_text(reference, "reference", 100)  # the ledger column's limit
    with state().unit_of_work() as ctx:
        a = accounts.get_account(ctx.session, account)
        entry, created = wallet.topup(ctx, a.id, value, idempotency_key=idempotency_key,
                                      reference=reference)
        balance = entry.balance_after
    note = "" if created else " (already applied: idempotency key seen before)"
    click.echo(f"topped up {_fmt(value)}; balance {_fmt(balance)}{note}")


@wallet_group.command("adjust", context_settings={"ignore_unknown_options": True})
@click.argument("account")
@click.argument("amount")
@click.option("--reason", required=True, help="Why (required, kept in the ledger and audit).")
@click.option("--idempotency-key")
@minor_option
def adjust(account: str, amount: str, reason: str, idempotency_key: str | None,
           minor: bool) -> None:
    """Correct a balance by a signed AMOUNT (e.g. -2.50 or 10)."""
    value = _amount(amount, minor, allow_negative=True)
    with state().unit_of_work() as ctx:
        a = accounts.get_account(ctx.session, account)
        entry, _ = wallet.adjust(ctx, a.id, value, reason=reason,
                                 idempotency_key=idempotency_key)
        balance = entry.balance_after
    click.echo(f"adjusted by {_fmt(value)}; balance {_fmt(balance)}")


@wallet_group.command("balance")
@click.argument("account")
@json_option
def balance(account: str, as_json: bool) -> None:
    """Balance, held funds and available funds."""
    with state().reader() as session:
        account_id = accounts.get_account(session, account).id
        bal = wallet.get_balance(session, account_id)
    if as_json:
        emit_json({"account_id": account_id, "balance": bal.balance, "held": bal.held,
                   "leased": bal.leased, "available": bal.available,
                   "currency": state().config.wallet["currency"]})
        return
    leased = f" (of which {_fmt(bal.leased)} set aside by running proxies)" if bal.leased else ""
    click.echo(f"balance {_fmt(bal.balance)}, held {_fmt(bal.held)}{leased}, "
               f"available {_fmt(bal.available)}")


@wallet_group.command("history")
@click.argument("account")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
def history(account: str, limit: int, as_json: bool) -> None:
    """Ledger entries, newest first."""
    with state().reader() as session:
        a = accounts.get_account(session, account)
        rows = [wallet.entry_dict(e) for e in wallet.history(session, a.id, limit=limit)]
    if as_json:
        emit_json(rows)
        return
    for e in rows:
        extra = e["reason"] or e["reference"] or ""
        click.echo(f"{e['created_at'][:19]}  {e['kind']:<10} {_fmt(e['amount']):>22}  "
                   f"-> {_fmt(e['balance_after'])}  {extra}")
    if not rows:
        click.echo("no ledger entries")


COMMANDS = [wallet_group]

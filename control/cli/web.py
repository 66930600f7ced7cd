"""`hushgate users …` and `hushgate tokens …` (who may use the control plane)."""

from __future__ import annotations

import sys
from typing import Any

import click

from control.cli.common import emit_json, group, json_option, state
from control.core import accounts, admin_tokens, passwords, totp

users_group = group("users", "Control-plane operators (admins and read-only viewers).")


password_file_option = click.option(
    "--password-file", type=click.File("r"), default=None,
    help="Read the password from this file's first line ('-' for stdin). Default: a hidden "
         "prompt on a terminal, else the first line of stdin. Never on the command line, "
         "where `ps` would show it.")


def read_password(source: Any, label: str) -> str:
    """The new password from ``--password-file``, a hidden prompt, or piped stdin."""
    if source is None:
        stdin = sys.stdin
        if stdin.isatty():
            return str(click.prompt(label, hide_input=True, confirmation_prompt=True))
        source = stdin
    password = source.readline().rstrip("\r\n")
    if not password:
        raise click.ClickException("no password given (the first line was empty)")
    return password


@users_group.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "viewer"]), default="admin",
              show_default=True)
@password_file_option
def users_create(username: str, role: str, password_file: Any) -> None:
    """Create an operator who signs in at /admin/."""
    password = read_password(password_file, f"password for {username}")
    with state().unit_of_work() as ctx:
        user = accounts.create_user(ctx, username=username, password=password, role=role)
        user_id = user.id
    click.echo(f"created {role} {username} ({user_id})")


@users_group.command("set-password")
@click.argument("username")
@password_file_option
def users_set_password(username: str, password_file: Any) -> None:
    """Give USERNAME a new password (their sessions end). Audited."""
    password = read_password(password_file, f"new password for {username}")
    with state().unit_of_work() as ctx:
        passwords.set_user_password(ctx, username, password)
    click.echo(f"password changed for {username}; their sessions have ended")


@users_group.command("delete")
@click.argument("username")
@click.option("--yes", is_flag=True, help="Confirm: the operator and their API tokens go.")
def users_delete(username: str, yes: bool) -> None:
    """Remove an operator (sessions end, admin API tokens go; the last admin stays). Audited."""
    if not yes:
        raise click.ClickException(f"deleting {username} cannot be undone: add --yes")
    with state().unit_of_work() as ctx:
        passwords.delete_user(ctx, username)
    click.echo(f"deleted operator {username}")


@users_group.command("list")
@json_option
def users_list(as_json: bool) -> None:
    """List operators."""
    with state().reader() as session:
        rows = [admin_tokens.user_dict(u) for u in admin_tokens.list_users(session)]
    if as_json:
        emit_json(rows)
        return
    for u in rows:
        flag = " (disabled)" if u["disabled"] else ""
        two_factor = "2fa" if u["totp_enabled"] else "-"
        click.echo(f"{u['username']:<24} {u['role']:<7} {two_factor:<4} {u['id']}{flag}")
    if not rows:
        click.echo("no users")


@users_group.command("totp-reset")
@click.argument("username")
def users_totp_reset(username: str) -> None:
    """Turn off USERNAME's two-factor sign-in (e.g. a lost device). Audited.

    They then sign in with their password alone and can set it up again under Security."""
    with state().unit_of_work() as ctx:
        user = accounts.get_user_by_name(ctx.session, username)
        if user is None:
            raise click.ClickException(f"unknown user {username!r}")
        was_on = totp.disable(ctx, user.id)
    if was_on:
        click.echo(f"two-factor sign-in is off for {username}")
    else:
        click.echo(f"{username} had no two-factor sign-in: nothing to do")


tokens_group = group("tokens", "Admin API tokens (Authorization: Bearer hga_…).")


@tokens_group.command("create")
@click.argument("username")
@click.option("--scope", type=click.Choice(admin_tokens.SCOPES), default="read",
              show_default=True)
@click.option("--name", help="A label for the token.")
@json_option
def tokens_create(username: str, scope: str, name: str | None, as_json: bool) -> None:
    """Issue a token for USERNAME. It is printed once and cannot be shown again."""
    with state().unit_of_work() as ctx:
        user = accounts.get_user_by_name(ctx.session, username)
        if user is None:
            raise click.ClickException(f"unknown user {username!r}")
        token, raw = admin_tokens.create_token(ctx, user.id, scope=scope, name=name)
        data = admin_tokens.token_dict(token)
    if as_json:
        emit_json({**data, "token": raw})
        return
    click.echo(f"created {scope} token {data['key_id']} for {username}")
    click.echo(raw)
    click.echo("store it now: hushgate keeps only a hash and cannot show it again", err=True)


@tokens_group.command("list")
@click.option("--user", "username", help="Only this user's tokens.")
@json_option
def tokens_list(username: str | None, as_json: bool) -> None:
    """List tokens (display prefix only)."""
    with state().reader() as session:
        user_id = None
        if username:
            user = accounts.get_user_by_name(session, username)
            if user is None:
                raise click.ClickException(f"unknown user {username!r}")
            user_id = user.id
        rows = [admin_tokens.token_dict(t) for t in admin_tokens.list_tokens(session, user_id)]
    if as_json:
        emit_json(rows)
        return
    for t in rows:
        status = "revoked" if t["revoked_at"] else "active"
        click.echo(f"{t['key_id']}  {t['scope']:<5}  {status:<7}  {t['prefix']}  {t['user_id']}")
    if not rows:
        click.echo("no tokens")


@tokens_group.command("revoke")
@click.argument("key_id")
def tokens_revoke(key_id: str) -> None:
    """Revoke a token now."""
    with state().unit_of_work() as ctx:
        admin_tokens.revoke_token(ctx, key_id)
    click.echo(f"revoked token {key_id}")


COMMANDS = [users_group, tokens_group]

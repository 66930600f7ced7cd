"""`hushgate init`: create or upgrade the database and the first admin."""

from __future__ import annotations

import os

import click

from control.cli.common import state
from control.core import accounts, schema


@click.command("init")
@click.option("--admin", "admin_name", default="admin", show_default=True,
              help="Username of the first admin (created only if there is no user yet).")
@click.option("--password-env", default="HUSHGATE_ADMIN_PASSWORD", show_default=True,
              help="Environment variable holding the first admin's password (else prompted).")
def init_command(admin_name: str, password_env: str) -> None:
    """Create or upgrade the database schema and the first admin. Safe to run twice."""
    st = state()
    db = st.db
    before = schema.current_revision(db)
    schema.upgrade(db)
    after = schema.current_revision(db)
    st.config.audit_hmac_key()
    st.config.session_secret()
    click.echo(f"database at revision {after}" + ("" if before == after else
                                                     f" (was {before or 'empty'})"))
    with db.transaction() as session:
        if accounts.count_users(session):
            click.echo("admin user exists; nothing else to do")
            return
    password = os.environ.get(password_env)
    if not password:
        if not click.get_text_stream("stdin").isatty():
            raise click.ClickException(
                f"no admin password: set ${password_env} or run interactively")
        password = click.prompt(f"password for admin {admin_name!r}", hide_input=True,
                                confirmation_prompt=True)
    with st.unit_of_work() as ctx:
        accounts.create_user(ctx, username=admin_name, password=password, role="admin")
    click.echo(f"created admin {admin_name!r}")


COMMANDS = [init_command]

"""`hushgate init`: create or upgrade the database and the first admin."""

from __future__ import annotations

import os
import secrets

import click

from control.cli.common import state
from control.core import accounts, audit, schema

#: The environment variable a script sets to give the first admin's password.
ADMIN_PASSWORD_ENV = "HUSHGATE_ADMIN_PASSWORD"


@click.command("init")
@click.option("--admin", "admin_name", default="admin", show_default=True,
              help="Username of the first admin (created only if there is no user yet).")
@click.option("--password-env", default=ADMIN_PASSWORD_ENV, show_default=True,
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
    adopted = audit.adopt_unsigned_state(db, st.config)
    if adopted is not None and adopted.ok:
        click.echo(f"audit state signed: {adopted.checked} events verified")
    elif adopted is not None:
        click.echo(f"warning: the existing audit chain does not verify ({adopted.problem}); "
                   "its state was left unsigned, so `hushgate audit verify` keeps failing",
                   err=True)
    if not ensure_first_admin(admin_name, password_env):
        click.echo("admin user exists; nothing else to do")


def ensure_first_admin(admin_name: str = "admin", password_env: str = ADMIN_PASSWORD_ENV,
                       *, generate: bool = False) -> bool:
    """Create the first admin if there is no user yet; True if one was created.

    The password comes from ``$password_env``, else a prompt on a terminal, else (with
    ``generate``, for `hushgate up`) a random one written to a 0600 file in the data folder
    whose path is printed — never the password itself.
    """
    st = state()
    with st.db.read_transaction() as session:
        if accounts.count_users(session):
            return False
    password = os.environ.get(password_env)
    secret_file = None
    if not password and generate:
        password = secrets.token_urlsafe(18)
        secret_file = st.config.data_dir / "initial-admin-password"
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
    if not password:
        if not click.get_text_stream("stdin").isatty():
            raise click.ClickException(
                f"no admin password: set ${password_env} or run interactively")
        password = click.prompt(f"password for admin {admin_name!r}", hide_input=True,
                                confirmation_prompt=True)
    with st.unit_of_work() as ctx:
        accounts.create_user(ctx, username=admin_name, password=password, role="admin")
    click.echo(f"created admin {admin_name!r}")
    if secret_file is not None:
        click.echo(f"its password is in {secret_file} (readable by you only); delete the "
                   "file once you have signed in")
    return True


COMMANDS = [init_command]

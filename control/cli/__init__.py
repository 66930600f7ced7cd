"""The ``hushgate`` command line: one root group, one module per subcommand group."""

from __future__ import annotations

import click

from control.cli.common import HushgateGroup, State
from control.core.files import set_private_umask

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=HushgateGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", envvar="HUSHGATE_CONFIG", type=click.Path(),
              help="Config file (default: $HUSHGATE_CONFIG, else built-in SQLite defaults).")
@click.version_option(package_name="hushgate")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """hushgate: a privacy-first gateway for LLM APIs that keeps metadata only."""
    ctx.obj = State(config_path)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from control.cli import accounts, audit, doctor, init, keys, lifecycle, runtime, wallet, web

    for module in (init, accounts, keys, wallet, audit, lifecycle, web, runtime, doctor):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    # Before anything is created: the data folder, databases and their WAL/SHM files, the
    # JSON-lines sink and secrets are then private even when a library creates them.
    set_private_umask()
    cli(prog_name="hushgate")

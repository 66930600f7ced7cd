"""Shared CLI plumbing: lazy config/database state, units of work, one-line errors."""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from control.core import schema
from control.core.audit import Actor
from control.core.config import Config, load_config
from control.core.context import Ctx
from control.core.db import Database
from control.core.errors import HushgateError


class State:
    """Put on ``ctx.obj`` by the root group; loads the config and database on first use."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._db: Database | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database.from_config(self.config)
        return self._db

    def require_schema(self) -> Database:
        """The database, refusing to work on one that `hushgate init` hasn't migrated."""
        db = self.db
        if not schema.is_current(db):
            raise click.ClickException(
                "the database is not initialised or is out of date: run `hushgate init`")
        return db

    @property
    def actor(self) -> Actor:
        return Actor("cli", os.environ.get("HUSHGATE_ACTOR") or getpass.getuser())

    @contextmanager
    def unit_of_work(self) -> Iterator[Ctx]:
        """One transaction as the CLI user: all or nothing."""
        with self.require_schema().transaction() as session:
            yield Ctx(session, self.config, self.actor)

    @contextmanager
    def reader(self) -> Iterator[Any]:
        with self.require_schema().read_transaction() as session:
            yield session

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()


class HushgateGroup(click.Group):
    """Turns every expected failure into a one-line error and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HushgateError as exc:
            raise click.ClickException(str(exc)) from None
        except DBAPIError as exc:
            if exc.connection_invalidated or "connect" in str(exc.orig).lower():
                raise click.ClickException("cannot reach the database") from None
            raise click.ClickException(
                f"database error ({type(exc.orig).__name__})") from None
        except SQLAlchemyError as exc:
            raise click.ClickException(f"database error ({type(exc).__name__})") from None


def group(name: str, help_text: str) -> click.Group:
    """A subcommand group with the same error handling as the root."""
    return HushgateGroup(name=name, help=help_text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def state(ctx: click.Context | None = None) -> State:
    ctx = ctx or click.get_current_context()
    return ctx.find_object(State)  # type: ignore[return-value]

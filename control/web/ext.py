"""Per-app state: configuration, database, token verifier, and units of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app
from sqlalchemy.orm import Session

from control.core.admin_tokens import TokenVerifier
from control.core.audit import Actor
from control.core.config import Config
from control.core.context import Ctx
from control.core.db import Database
from control.core.money import format_amount
from control.core.net import is_loopback


def _has_tls(section: dict[str, Any]) -> bool:
    tls = section.get("tls") or {}
    return bool(tls.get("cert_file") and tls.get("key_file"))


class Hushgate:
    """What every view needs, kept in ``app.extensions['hushgate']``."""

    def __init__(self, config: Config, db: Database, *, owns_db: bool) -> None:
        self.config = config
        self.db = db
        self.owns_db = owns_db
        self.verifier = TokenVerifier(config.auth["bcrypt_cost"])
        c = config.control
        explicit = c.get("secure_cookies")
        if explicit is not None:
            self.secure_cookies = bool(explicit)
        else:
            # Secure unless this is plain HTTP on loopback (where browsers can't send it).
            self.secure_cookies = _has_tls(c) or not is_loopback(c["listen_host"])
        self.last_verify: dict[str, Any] | None = None

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only session whose loaded rows stay usable (detached) after it ends."""
        with self.db.readers() as session:
            try:
                yield session
            finally:
                session.expunge_all()  # before the rollback, which would expire them
                session.rollback()

    @contextmanager
    def uow(self, actor: Actor) -> Iterator[Ctx]:
        """One audited write transaction: all or nothing."""
        with self.db.transaction() as session:
            yield Ctx(session, self.config, actor)

    def format_money(self, minor: int | None, currency: bool = True) -> str:
        if minor is None:
            return "—"
        w = self.config.wallet
        return format_amount(minor, w["minor_unit_scale"], w["currency"] if currency else None)

    def parse_money(self, text: str, *, field: str = "amount",
                    allow_negative: bool = False) -> int:
        from control.core.money import parse_amount

        w = self.config.wallet
        return parse_amount(text, scale=w["minor_unit_scale"], max_amount=w["max_amount"],
                            allow_negative=allow_negative, field=field)


def hg() -> Hushgate:
    return current_app.extensions["hushgate"]  # type: ignore[no-any-return]

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


def resolve_secure_cookies(control: dict[str, Any], host: str) -> bool:
    """Whether the session cookie is marked Secure when the control plane listens on ``host``.

    Always under ``control.tls`` (the listener speaks HTTPS only); otherwise
    ``control.secure_cookies``, or when that is null: Secure unless this is plain HTTP on
    loopback (where browsers would not send a Secure cookie back).
    """
    if _has_tls(control):
        return True
    explicit = control.get("secure_cookies")
    if explicit is not None:
        return bool(explicit)
    return not is_loopback(host)


class Hushgate:
    """What every view needs, kept in ``app.extensions['hushgate']``."""

    def __init__(self, config: Config, db: Database, *, owns_db: bool) -> None:
        self.config = config
        self.db = db
        self.owns_db = owns_db
        self.verifier = TokenVerifier(config.auth["bcrypt_cost"])
        # ControlServer re-resolves this for the address it actually listens on.
        self.secure_cookies = resolve_secure_cookies(config.control,
                                                     config.control["listen_host"])
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

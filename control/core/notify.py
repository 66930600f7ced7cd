"""Messages to account holders: one sender, an outbox, and SMTP delivery.

Every notification goes through ``send``. A message is a *kind* (a fixed template) plus a few
parameters that each kind declares and validates (a key id, an amount, a date), so no message
can carry a key secret, a prompt or any other request content: there is nowhere to put it.
The text is rendered at delivery from the template, the parameters and the configuration.

Kinds are essential (security, billing, legal: they go even to people who opted out of
non-essential messages) or not (product news: skipped for people who opted out). Changes to
the privacy policy are essential: the policy is the terms under which data is processed, and
a material change has to reach every account holder.

``send`` only queues (in the caller's transaction, so a rolled-back action sends nothing);
``deliver_pending`` sends the queue over SMTP (``smtp`` in the config), re-checking opt-out at
delivery time. Delivery is at-least-once.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from string import Template
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from control.core.base import new_id, utcnow
from control.core.config import Config
from control.core.db import Database
from control.core.errors import NotFound, ValidationError
from control.core.models import Account, Notification

log = logging.getLogger("hushgate.notify")

MAX_ATTEMPTS = 5
_KEY_LIKE = re.compile(r"hga?_[0-9A-Za-z]{12}_[0-9A-Za-z]{6,}")
_AMOUNT = re.compile(r"^-?\d{1,15}(\.\d{1,9})?( [A-Z]{3})?$")  # scale up to 10^9


def _pattern(regex: str) -> Callable[[Any], str]:
    compiled = re.compile(regex)

    def check(value: Any) -> str:
        text = str(value)
        if not compiled.fullmatch(text):
            raise ValueError
        return text
    return check


def _int(lo: int, hi: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError
        return str(value)
    return check


def _plain_text(max_len: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = str(value).strip()
        if not text or len(text) > max_len or any(ord(c) < 32 for c in text):
            raise ValueError
        if _KEY_LIKE.search(text):
            raise ValueError
        return text
    return check


KEY_ID = _pattern(r"[0-9A-Za-z]{12}")
AMOUNT = _pattern(_AMOUNT.pattern[1:-1])
DATE = _pattern(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Kind:
    """A message template: whether it is essential, and the parameters it accepts."""

    name: str
    essential: bool
    category: str  # security | billing | legal | product
    subject: str
    body: str
    params: dict[str, Callable[[Any], str]] = field(default_factory=dict)
    # Values computed at delivery only, never stored (e.g. a link's secret half).
    derive: Callable[[Config, dict[str, str]], dict[str, str]] | None = None


def _password_link(config: Config, params: dict[str, str]) -> dict[str, str]:
    # The link's MAC is recomputed from the stored token id at delivery (see
    # control.core.passwords): the outbox holds only the id.
    from control.core import passwords  # type: ignore[attr-defined,unused-ignore]

    return {"link": passwords.link(config, params["token_id"])}


TOKEN_ID = _pattern(r"[0-9A-Za-z_-]{16,64}")


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("key_created", True, "security", "A new API key was created",
         "A new API key ($key_id) was created on your $operator account.\n"
         "If you did not expect this, revoke the key and contact $contact.",
         {"key_id": KEY_ID}),
    Kind("key_revoked", True, "security", "An API key was revoked",
         "The API key $key_id on your $operator account was revoked and no longer works.",
         {"key_id": KEY_ID}),
    Kind("low_balance", True, "billing", "Your balance is low",
         "The available balance of your $operator wallet is $available, below $threshold.\n"
         "Requests are refused once it cannot cover their cost.",
         {"available": AMOUNT, "threshold": AMOUNT}),
    Kind("account_deleted", True, "security", "Your account was deleted",
         "Your $operator account was deleted. Its API keys no longer work.\n"
         "Your personal data will be erased within $days days.",
         {"days": _int(0, 36500)}),
    Kind("policy_changed", True, "legal", "Our privacy policy has changed",
         "The $operator privacy policy was updated on $last_updated.\n"
         "Please read the new version; questions go to $contact.",
         {"last_updated": DATE}),
    Kind("password_reset", True, "security", "Reset your $operator password",
         "Someone asked to reset the password of your $operator account.\n"
         "To choose a new one, open this link within $minutes minutes (it works once):\n"
         "$link\n\nIf it wasn't you, ignore this message: your password stays as it is.",
         {"token_id": TOKEN_ID, "minutes": _int(1, 100_000)}, _password_link),
    Kind("account_invite", True, "security", "Set the password of your $operator account",
         "An account was created for you at $operator.\n"
         "To choose your password, open this link within $hours hours (it works once):\n"
         "$link\n\nQuestions go to $contact.",
         {"token_id": TOKEN_ID, "hours": _int(1, 100_000)}, _password_link),
    Kind("product_update", False, "product", "News from $operator",
         "$title\n\nThere is more in the $operator control panel.",
         {"title": _plain_text(200)}),
)}

_ESSENTIAL_FOOTER = ("This is an essential message about your account (security, billing or "
                     "our terms); it is sent even if you opted out of other messages.")
_OPTIONAL_FOOTER = ("You receive this because you have not opted out of non-essential "
                    "messages. You can opt out in your account preferences.")


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValidationError(f"unknown notification kind {str(name)[:40]!r}", "kind") from None


def validate_params(k: Kind, params: dict[str, Any]) -> dict[str, str]:
    """Exactly the kind's parameters, each in its safe form; anything else is refused."""
    unknown = sorted(set(params) - set(k.params))
    missing = sorted(set(k.params) - set(params))
    if unknown or missing:
        name = (unknown or missing)[0]
        raise ValidationError(f"notification {k.name}: {'unexpected' if unknown else 'missing'}"
                              f" parameter {name!r}", name)
    out = {}
    for name, check in k.params.items():
        try:
            out[name] = check(params[name])
        except ValueError:
            raise ValidationError(f"notification {k.name}: parameter {name!r} is not allowed",
                                  name) from None
    return out


def render(config: Config, k: Kind, params: dict[str, str]) -> tuple[str, str]:
    """(subject, body) from the template, the validated parameters and the configuration."""
    values = {**params, "operator": config.policy["operator_name"],
              "contact": config.policy["contact_email"]}
    if k.derive is not None:
        values.update(k.derive(config, params))
    subject = Template(k.subject).safe_substitute(values)
    body = Template(k.body).safe_substitute(values)
    footer = _ESSENTIAL_FOOTER if k.essential else _OPTIONAL_FOOTER
    return subject, f"{body}\n\n-- \n{footer}\n"


def _status_for(account: Account, k: Kind) -> str:
    if account.status == "erased" or not account.email:
        return "skipped"
    if not k.essential and account.opt_out_non_essential:
        return "skipped"
    return "queued"


def send(session: Session, config: Config, account_id: str, kind_name: str,
         **params: Any) -> Notification:
    """Queue one message to an account holder (the only way anything is sent).

    Non-essential kinds are recorded as ``skipped`` for accounts that opted out. Flushes;
    the caller's transaction decides whether it is ever delivered.
    """
    k = kind(kind_name)
    safe = validate_params(k, params)
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound(f"unknown account {str(account_id)[:40]}")
    note = Notification(account_id=account.id, kind=k.name, essential=k.essential,
                        params=safe, status=_status_for(account, k))
    session.add(note)
    session.flush()
    return note


def broadcast(session: Session, config: Config, kind_name: str, *,
              statuses: Iterable[str] = ("active", "disabled"), batch: int = 1000,
              **params: Any) -> int:
    """Queue one message to every account with one of ``statuses``. Returns how many were
    queued (opted-out accounts get a ``skipped`` row for non-essential kinds)."""
    k = kind(kind_name)
    safe = validate_params(k, params)
    queued, last = 0, ""
    statuses = tuple(statuses)
    while True:
        rows = session.execute(select(Account.id, Account.opt_out_non_essential,
                                      Account.email, Account.status)
                               .where(Account.status.in_(statuses), Account.id > last)
                               .order_by(Account.id).limit(batch)).all()
        if not rows:
            return queued
        now = utcnow()
        values = []
        for row in rows:
            skip = not row.email or (not k.essential and row.opt_out_non_essential)
            values.append({"id": new_id(), "account_id": row.id, "kind": k.name,
                           "essential": k.essential, "params": safe, "attempts": 0,
                           "status": "skipped" if skip else "queued", "created_at": now})
            queued += not skip
        session.execute(insert(Notification), values)
        last = rows[-1].id


# -- delivery -------------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    retrying: int = 0
    disabled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _connect(config: Config) -> smtplib.SMTP:
    smtp = config.smtp
    conn = smtplib.SMTP(smtp["host"], smtp["port"], timeout=smtp["timeout_seconds"])
    if smtp["starttls"]:
        conn.starttls(context=ssl.create_default_context())
    if smtp.get("username"):
        password = os.environ.get(smtp["password_env"]) if smtp.get("password_env") else None
        conn.login(smtp["username"], password or "")
    return conn


def _message(config: Config, to: str, k: Kind, params: dict[str, str]) -> EmailMessage:
    subject, body = render(config, k, params)
    msg = EmailMessage()
    msg["From"] = config.smtp["from_address"]
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=config.smtp["from_address"].rpartition("@")[2]
                                   or "localhost")
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body)
    return msg


def _finish(db: Database, note_id: str, status: str, attempts: int | None = None) -> None:
    values: dict[str, Any] = {"status": status}
    if status == "sent":
        values["sent_at"] = utcnow()
    if attempts is not None:
        values["attempts"] = attempts
    with db.transaction() as s:
        s.execute(update(Notification).where(Notification.id == note_id,
                                             Notification.status == "queued").values(**values))


def deliver_pending(db: Database, config: Config, *, limit: int = 100) -> DeliveryReport:
    """Send up to ``limit`` queued messages over SMTP. Without ``smtp.host`` nothing is sent
    (the queue waits). A message that fails ``MAX_ATTEMPTS`` times is marked failed."""
    report = DeliveryReport()
    if not config.smtp.get("host"):
        report.disabled = True
        return report
    with db.read_transaction() as s:
        rows = s.execute(select(Notification.id, Notification.kind, Notification.params,
                                Notification.attempts, Account.email, Account.status,
                                Account.opt_out_non_essential)
                         .join(Account, Account.id == Notification.account_id)
                         .where(Notification.status == "queued")
                         .order_by(Notification.created_at, Notification.id)
                         .limit(limit)).all()
    if not rows:
        return report
    conn: smtplib.SMTP | None = None
    try:
        for row in rows:
            k = KINDS.get(row.kind)
            if (k is None or row.status == "erased" or not row.email
                    or (not k.essential and row.opt_out_non_essential)):
                _finish(db, row.id, "skipped")
                report.skipped += 1
                continue
            try:
                if conn is None:
                    conn = _connect(config)
                conn.send_message(_message(config, row.email, k, dict(row.params)))
            except OSError as exc:  # smtplib.SMTPException is an OSError too
                _close(conn)
                conn = None
                attempts = row.attempts + 1
                final = attempts >= MAX_ATTEMPTS
                log.warning("notification delivery failed (%s)%s", type(exc).__name__,
                            "; giving up" if final else "")
                _finish(db, row.id, "failed" if final else "queued", attempts)
                report.failed += final
                report.retrying += not final
                continue
            _finish(db, row.id, "sent", row.attempts + 1)
            report.sent += 1
    finally:
        _close(conn)
    return report


def _close(conn: smtplib.SMTP | None) -> None:
    if conn is None:
        return
    try:
        conn.quit()
    except OSError:
        conn.close()

"""The privacy policy, rendered from the running configuration.

The published numbers are the enforced ones: retention windows, the minimum age, the operator
and contact come from the same configuration the retention job and sign-up use. The text is
``policy_template.txt`` (the project's policy with placeholders).

Each published version is recorded (``policy_versions``: hash of the text without its date,
and the date). ``publish_policy`` — run by ``hushgate policy publish`` and at service start —
records a new version when the rendered text changed, dates it today, queues a
``policy_changed`` notice (essential) to every account and audits the change. The first
version is the baseline: it keeps the configured ``policy.last_updated`` and notifies no one.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from pathlib import Path
from string import Template
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.core import notify
from control.core.audit import Action
from control.core.base import utcnow
from control.core.config import Config
from control.core.context import Ctx
from control.core.models import PolicyVersion

TEMPLATE_PATH = Path(__file__).with_name("policy_template.txt")
_DATE_SLOT = "\x00date\x00"


def _days(n: int) -> str:
    return "1 day" if n == 1 else f"{n} days"


def _client_details(privacy: dict[str, Any]) -> str:
    parts = []
    if privacy.get("client_ip") == "truncated":
        parts.append("a truncated client IP address")
    elif privacy.get("client_ip") == "hashed":
        parts.append("a hashed client IP address")
    if privacy.get("user_agent") == "hashed":
        parts.append("a hashed user agent")
    return ", and " + " and ".join(parts) if parts else ""


def _payment_details(payments: dict[str, Any]) -> str:
    if payments.get("provider") == "stripe":
        return (" Card payments for top-ups are made on Stripe's checkout page; your card "
                "details go to Stripe and never reach us.")
    return ""


def _human_date(iso: str) -> str:
    d = date.fromisoformat(iso)
    return f"{d.strftime('%B')} {d.day}, {d.year}"


def _render(config: Config, date_text: str) -> str:
    r, p = config.retention, config.policy
    values = {
        "operator_name": p["operator_name"], "contact_email": p["contact_email"],
        "minimum_age": p["minimum_age"], "last_updated": date_text,
        "request_records_days": _days(r["request_records_days"]),
        "audit_events_days": _days(r["audit_events_days"]),
        "deleted_account_erasure_days": _days(r["deleted_account_erasure_days"]),
        "client_details": _client_details(config.privacy),
        "payment_details": _payment_details(config.raw["payments"]),
    }
    return Template(TEMPLATE_PATH.read_text()).substitute(values)


def text_hash(config: Config) -> str:
    """SHA-256 of the policy as configured, without its date (the date follows the text)."""
    return hashlib.sha256(_render(config, _DATE_SLOT).encode()).hexdigest()


def latest_version(session: Session) -> PolicyVersion | None:
    return session.scalar(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(1))


def render_policy(config: Config, *, session: Session | None = None,
                  last_updated: str | None = None) -> str:
    """The policy text for the running configuration.

    The date is ``last_updated`` if given; else, with a ``session``, the date of the published
    version when it matches this text; else ``policy.last_updated`` from the configuration;
    else (not published yet, no date configured) today.
    """
    if last_updated is None and session is not None:
        latest = latest_version(session)
        if latest is not None and latest.text_hash == text_hash(config):
            last_updated = latest.last_updated
    if last_updated is None:
        last_updated = config.policy["last_updated"] or utcnow().date().isoformat()
    return _render(config, _human_date(last_updated))


def publish_policy(ctx: Ctx, *, today: date | None = None,
                   notes: str | None = None) -> PolicyVersion | None:
    """Record the current text as a new version if it changed; returns it, or None if the
    published version is already current."""
    digest = text_hash(ctx.config)
    latest = latest_version(ctx.session)
    if latest is not None and latest.text_hash == digest:
        return None
    configured = ctx.config.policy["last_updated"]
    today_iso = (today or utcnow().date()).isoformat()
    if latest is None:
        day = configured or today_iso
    else:
        day = max(today_iso, configured or "", latest.last_updated)
    version = PolicyVersion(text_hash=digest, last_updated=day, notes=notes)
    ctx.session.add(version)
    ctx.session.flush()
    notified = 0
    if latest is not None:
        notified = notify.broadcast(ctx.session, ctx.config, "policy_changed", last_updated=day)
    ctx.audit(Action.POLICY_CHANGED, "policy", str(version.id), last_updated=day,
              text_hash=digest, notified=notified, first=latest is None)
    return version


# The shipped defaults and the example configuration's values, and the domains reserved for
# examples and tests (RFC 2606 / RFC 6761): a policy naming them names nobody.
PLACEHOLDER_OPERATORS = frozenset({"hushgate operator", "example ai gateway"})
PLACEHOLDER_DOMAINS = ("example.com", "example.net", "example.org", "localhost")
PLACEHOLDER_TLDS = (".example", ".invalid", ".test", ".localhost")


def placeholder_policy_fields(config: Config) -> list[str]:
    """The ``policy.*`` keys that still hold placeholder details (empty when the published
    policy names a real operator and contact). The CLI warns at start and the dashboard shows
    them: until they are set the policy tells account holders to write to nobody."""
    p = config.policy
    fields = []
    if p["operator_name"].strip().lower() in PLACEHOLDER_OPERATORS:
        fields.append("policy.operator_name")
    domain = p["contact_email"].rpartition("@")[2].strip().lower().rstrip(".")
    if domain in PLACEHOLDER_DOMAINS or domain.endswith(PLACEHOLDER_TLDS) \
            or any(domain.endswith("." + d) for d in PLACEHOLDER_DOMAINS):
        fields.append("policy.contact_email")
    return fields


def policy_versions(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    rows = session.scalars(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(limit))
    return [{"id": v.id, "text_hash": v.text_hash, "last_updated": v.last_updated,
             "created_at": _iso(v.created_at), "notes": v.notes} for v in rows]


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None

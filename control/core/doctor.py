"""`hushgate doctor`: check a configuration and a running deployment against the policy.

Each check returns one :class:`Check`: a name, ``pass``/``warn``/``fail``/``skip``, what was
found, and for anything but a pass what to do about it. Only ``fail`` makes the doctor fail;
``warn`` is for what is fine on a first day but not in production (a head never anchored
yet, placeholder policy details).

The doctor only reads: it creates no database, no secret and no folder (the configuration's
own ``audit_hmac_key()`` would generate a missing key, so the doctor looks for the key the
way it would be found instead). Messages never contain a secret, a password or a URL's
credentials.
"""

from __future__ import annotations

import smtplib
import ssl
import stat
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from control.core import audit, audit_head, retention, schema
from control.core.config import Config
from control.core.db import Database
from control.core.net import is_loopback
from control.core.passwords import control_url

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"

#: The purge runs every ``retention.schedule_minutes``; older than twice that (plus this
#: margin) means the scheduler is not running.
PURGE_GRACE = timedelta(minutes=10)
#: Placeholder policy details that a real operator must replace (config.py's defaults and
#: config.example.yaml's).
PLACEHOLDER_OPERATORS = frozenset({"hushgate operator", "Example AI Gateway"})
PLACEHOLDER_CONTACTS = frozenset({"privacy@example.com"})


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, PASS, detail)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, FAIL, detail, fix)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, WARN, detail, fix)


# -- listeners ------------------------------------------------------------------------------


def _has_tls(section: dict[str, Any]) -> bool:
    tls = section.get("tls") or {}
    return bool(tls.get("cert_file") and tls.get("key_file"))


def check_listener(config: Config, which: str) -> Check:
    """TLS on a non-loopback listener (``proxy`` or ``control``)."""
    section = config.raw[which]
    name = f"tls.{which}"
    where = f"{section['listen_host']}:{section['listen_port']}"
    if _has_tls(section):
        tls = section["tls"]
        for key in ("cert_file", "key_file"):
            try:
                Path(tls[key]).read_bytes()
            except OSError as exc:
                return fail(name, f"{which}.tls.{key} cannot be read ({exc.strerror})",
                            f"point {which}.tls.{key} at a readable PEM file")
        return ok(name, f"{which} serves HTTPS on {where}")
    if is_loopback(section["listen_host"]):
        return ok(name, f"{which} listens on loopback {where} (plain HTTP stays on this host)")
    if section.get("allow_plain_http"):
        return warn(name, f"{which} serves plain HTTP on {where} (allow_plain_http)",
                    "make sure a TLS terminator is the only way in: firewall the port, or "
                    f"set {which}.tls.cert_file and key_file")
    return fail(name, f"{which} listens on {where} without TLS",
                f"set {which}.tls.cert_file and key_file, or listen on 127.0.0.1 behind a "
                f"TLS terminator (and set {which}.allow_plain_http only if one is in front)")


# -- files ----------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_data_dir(config: Config) -> Check:
    path = config.data_dir
    if not path.exists():
        return fail("permissions.data_dir", f"the data folder {path} does not exist",
                    "run `hushgate init`")
    mode = _mode(path)
    if mode & 0o077:
        return fail("permissions.data_dir", f"the data folder {path} is {mode:o} (others may "
                    "read it)", f"chmod 700 {path}")
    return ok("permissions.data_dir", f"the data folder {path} is {mode:o}")


def secret_files(config: Config) -> Iterator[tuple[str, Path]]:
    """Every file holding a secret or personal data that hushgate reads or writes."""
    s = config.raw["secrets"]
    yield "audit key", Path(s["audit_hmac_key_file"] or config.data_dir / "audit-hmac.key")
    yield "session secret", Path(s["session_secret_file"] or
                                 config.data_dir / "session-secret.key")
    yield "audit head file", config.audit_head_path()
    url = make_url(config.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db = Path(url.database)
        yield "SQLite database", db
        for suffix in ("-wal", "-shm"):
            yield f"SQLite database ({suffix[1:]})", db.with_name(db.name + suffix)
    metrics_token = (config.raw.get("metrics") or {}).get("token_file")
    if metrics_token:
        yield "metrics token", Path(metrics_token)
    for provider in config.providers.values():
        if provider.key_file:
            yield f"provider key of {provider.name}", Path(provider.key_file)
    for which in ("proxy", "control"):
        key = (config.raw[which].get("tls") or {}).get("key_file")
        if key:
            yield f"{which} TLS key", Path(key)


def check_secret_files(config: Config) -> Check:
    loose = []
    for what, path in secret_files(config):
        if path.exists() and _mode(path) & 0o077:
            loose.append((what, path, _mode(path)))
    if loose:
        listed = ", ".join(f"{what} {path} is {mode:o}" for what, path, mode in loose)
        paths = " ".join(str(p) for _, p, _ in loose)
        return fail("permissions.secrets", listed, f"chmod 600 {paths}")
    return ok("permissions.secrets", "secret and database files are readable by their owner "
              "only (0600)")


# -- audit ----------------------------------------------------------------------------------


def audit_key(config: Config) -> tuple[bytes | None, str]:
    """The audit key if it can be found without creating one, and where it came from."""
    import os

    s = config.raw["secrets"]
    env = s.get("audit_hmac_key_env")
    if env and os.environ.get(env):
        return os.environ[env].encode(), f"${env}"
    path = Path(s["audit_hmac_key_file"] or config.data_dir / "audit-hmac.key")
    try:
        value = path.read_bytes().strip()
    except OSError:
        return None, str(path)
    return (value if len(value) >= 32 else None), str(path)


def check_audit(config: Config, db: Database) -> list[Check]:
    key, where = audit_key(config)
    if key is None:
        return [fail("audit.key", f"no audit key (looked in {where}, or it holds fewer than "
                     "32 bytes)", "run `hushgate init`, or set secrets.audit_hmac_key_env / "
                     "audit_hmac_key_file to the key this deployment was created with")]
    checks = [ok("audit.key", f"audit key from {where}")]
    head_path = config.audit_head_path()
    with db.read_transaction() as session:
        result = audit.verify(session, key, head_path=head_path)
        if not result.ok:
            checks.append(fail("audit.chain", f"audit chain broken: {result.problem}",
                               "investigate before anything else: compare with an anchored "
                               "head copied off this host (`hushgate audit verify`)"))
            return checks
        checks.append(ok("audit.chain", f"audit chain intact: {result.checked} events"))
        try:
            anchored = audit_head.last_entry(head_path, key)
        except audit_head.HeadFileError as exc:  # verify read it already; kept for safety
            checks.append(fail("audit.anchor", str(exc), "restore the head file"))
            return checks
    if anchored is None:
        checks.append(warn("audit.anchor", f"the chain head ({result.head_seq} events) was "
                           f"never anchored in {head_path}", "run `hushgate audit head` and "
                           "copy its line somewhere off this host; the retention purge "
                           "anchors it on every run"))
    elif anchored.seq < result.head_seq:
        checks.append(warn("audit.anchor", f"{result.head_seq - anchored.seq} events since the "
                           f"last anchored head ({anchored.at})", "run `hushgate audit head` "
                           "(the retention purge anchors it on every run)"))
    elif not (config.raw["audit"].get("anchor_syslog") or config.raw["audit"].get("anchor_https")):
        checks.append(warn("audit.anchor", f"the head ({anchored.seq} events) is anchored only "
                           f"on this host ({head_path})", "set audit.anchor_syslog or "
                           "audit.anchor_https so signed heads are pushed off this host (or copy "
                           "`hushgate audit head` output somewhere else)"))
    else:
        checks.append(ok("audit.anchor", f"the head ({anchored.seq} events) is anchored in "
                         f"{head_path} and pushed to the configured sink"))
    return checks


# -- retention ------------------------------------------------------------------------------


def check_retention(config: Config, db: Database, now: datetime | None = None) -> list[Check]:
    now = now or datetime.now(UTC)
    minutes = config.retention["schedule_minutes"]
    with db.read_transaction() as session:
        status = retention.retention_status(session, config, now=now)
    checks = []
    last = status["last_run"]
    if last is None:
        checks.append(warn("retention.scheduler", "no retention purge has run yet",
                           "start the control plane (`hushgate serve` or `up`): it purges at "
                           f"start and every {minutes} min; or run `hushgate retention run`"))
    else:
        ran = datetime.fromisoformat(last)
        if ran.tzinfo is None:
            ran = ran.replace(tzinfo=UTC)
        age = now - ran
        if age > timedelta(minutes=2 * minutes) + PURGE_GRACE:
            checks.append(fail("retention.scheduler", f"the last retention purge ran "
                               f"{_ago(age)} ago (scheduled every {minutes} min)",
                               "the scheduler is not running: start `hushgate serve` (exactly "
                               "one replica without --no-housekeeping), and check its log"))
        else:
            checks.append(ok("retention.scheduler", f"the last retention purge ran {_ago(age)} "
                             f"ago (every {minutes} min)"))
    due = {"request records": status["request_records_due"],
           "audit events": status["audit_events_due"],
           "accounts to erase": status["accounts_due_for_erasure"]}
    overdue = {k: v for k, v in due.items() if v}
    if overdue:
        listed = ", ".join(f"{v} {k}" for k, v in overdue.items())
        checks.append(fail("retention.due", f"past their retention window: {listed}",
                           "run `hushgate retention run`, then make sure the scheduler runs"))
    else:
        checks.append(ok("retention.due", "nothing is kept past its retention window"))
    return checks


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


# -- providers, mail, clock, database -------------------------------------------------------


def _demo_simulator(provider: Any) -> bool:
    """The demo simulator of the defaults, whose key `hushgate up` makes up at start."""
    return provider.name.startswith("simulator") and is_loopback(
        urlsplit(provider.base_url).hostname)


def check_provider_keys(config: Config) -> Check:
    used = {m.provider.name: m.provider for m in config.models.values()}
    missing, demo = [], []
    for name, provider in sorted(used.items()):
        if provider.api_key():
            continue
        (demo if _demo_simulator(provider) else missing).append((name, provider))
    if missing:
        where = ", ".join(f"{n} (${p.key_env})" if p.key_env and not p.key_file
                          else f"{n} ({p.key_file or 'no key_env or key_file'})"
                          for n, p in missing)
        return fail("providers.keys", f"no provider key for {where}",
                    "set the environment variable (or key_file) named in the provider's "
                    "config for the proxy's service")
    if demo:
        return ok("providers.keys", "only the demo simulator, whose key `hushgate up` sets "
                  "(add real providers to the config for production)")
    return ok("providers.keys", f"keys present for {', '.join(sorted(used))}")


def check_smtp(config: Config) -> Check:
    smtp = config.smtp
    if not smtp.get("host"):
        return Check("smtp", SKIP, "smtp.host is not set: notifications stay queued")
    where = f"{smtp['host']}:{smtp['port']}"
    try:
        with smtplib.SMTP(smtp["host"], smtp["port"], timeout=smtp["timeout_seconds"]) as conn:
            code, _ = conn.ehlo()
            if code >= 400:
                raise smtplib.SMTPResponseException(code, b"")
            if smtp.get("starttls"):
                conn.starttls(context=ssl.create_default_context())
            conn.noop()
    except (OSError, smtplib.SMTPException) as exc:
        return fail("smtp", f"cannot talk to the SMTP server {where} ({type(exc).__name__})",
                    "check smtp.host, smtp.port, smtp.starttls and the firewall")
    return ok("smtp", f"SMTP server {where} answers" +
              (" and STARTTLS works" if smtp.get("starttls") else ""))


def check_clock(db: Database, now: Callable[[], datetime] | None = None) -> Check:
    """The database's clock (which the audit triggers use) against this host's."""
    local = (now or (lambda: datetime.now(UTC)))()
    with db.read_transaction() as session:
        if db.dialect == "sqlite":
            # SQLite has no clock of its own: it reads this host's (always agrees).
            text = session.scalar(select(func.strftime("%Y-%m-%d %H:%M:%f", "now")))
            db_now = datetime.fromisoformat(str(text)).replace(tzinfo=UTC)
        else:
            db_now = session.scalar(select(func.now()))
            if db_now.tzinfo is None:
                db_now = db_now.replace(tzinfo=UTC)
    skew = abs((db_now - local).total_seconds())
    margin = retention.CLOCK_MARGIN.total_seconds()
    if skew > margin:
        return fail("clock", f"the database clock and this host's differ by {skew:.0f} s "
                    f"(allowed: {margin:.0f} s)", "run NTP (systemd-timesyncd, chrony) on "
                    "both hosts")
    return ok("clock", f"database and host clocks agree within {max(skew, 0.001):.3f} s")


def check_database(config: Config) -> tuple[Check, Database | None]:
    """Reachable, migrated to head. Returns the open database for the other checks."""
    url = make_url(config.database_url)
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database and url.database != ":memory:" and \
            not Path(url.database).exists():
        return fail("database", f"no SQLite database at {url.database}",
                    "run `hushgate init`"), None
    # Not Database.from_config: that tightens permissions and refuses a loose secret file,
    # and the doctor only reads (it reports those in its own checks).
    db = Database(config.database_url, pool_size=1, echo=False)
    try:
        current = schema.current_revision(db)
    except Exception as exc:  # noqa: BLE001 - reported by class, never its text (credentials)
        db.dispose()
        where = url.render_as_string(hide_password=True) if backend != "sqlite" else "SQLite"
        return fail("database", f"cannot reach {where} ({type(exc).__name__})",
                    "check database.url (or the variable database.url_env names), that the "
                    "server runs and accepts this host"), None
    head = schema.head_revision()
    kind = "PostgreSQL" if backend == "postgresql" else "SQLite"
    if current != head:
        db.dispose()
        return fail("database", f"{kind} is at migration {current or 'none'}, the code "
                    f"expects {head}", "run `hushgate init` (it migrates; safe to repeat)"), None
    return ok("database", f"{kind} reachable, migrations at head ({head})"), db


def check_policy(config: Config) -> Check:
    policy = config.policy
    placeholders = []
    if policy["operator_name"] in PLACEHOLDER_OPERATORS:
        placeholders.append(f"policy.operator_name ({policy['operator_name']!r})")
    if policy["contact_email"] in PLACEHOLDER_CONTACTS:
        placeholders.append(f"policy.contact_email ({policy['contact_email']!r})")
    if placeholders:
        return warn("policy", "the published privacy policy names placeholder details: "
                    + ", ".join(placeholders), "set your own in the config's policy section")
    return ok("policy", "the privacy policy names the operator and a contact")


def check_public_url(config: Config) -> Check:
    """The base of password-reset and invite links and payment return pages."""
    base = control_url(config, "")
    if config.control["public_url"]:
        return ok("control.public_url", f"links in messages start with {base}")
    if config.control["listen_host"] in ("0.0.0.0", "::", ""):  # noqa: S104 - a comparison
        return warn("control.public_url", f"links in messages would start with {base}, which "
                    "nobody can open", "set control.public_url to the address people open, "
                    "e.g. https://gateway.example.com")
    return ok("control.public_url", f"links in messages start with the listen address {base}")


# -- a running deployment -------------------------------------------------------------------


def check_url(name: str, base_url: str, timeout: float = 5.0,
              cafile: str | None = None) -> Check:
    """``GET {base_url}/healthz`` answers 200; plain HTTP only to loopback."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return fail(name, "not an http(s) URL", "give a URL like https://gateway.example.com")
    shown = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return fail(name, f"{shown} is plain HTTP to a non-loopback host",
                    "serve it over HTTPS (the listener's tls settings, or a TLS terminator)")
    url = base_url.rstrip("/") + "/healthz"
    context = ssl.create_default_context(cafile=cafile) if parts.scheme == "https" else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None)
        why = type(reason).__name__ if isinstance(reason, BaseException) else type(exc).__name__
        return fail(name, f"{shown}/healthz cannot be reached ({why})",
                    "check that the service runs and the URL, port and certificate are right")
    if status != 200:
        return fail(name, f"{shown}/healthz answered {status}", "check the service's log")
    return ok(name, f"{shown}/healthz answers 200")


# -- all of it ------------------------------------------------------------------------------


def run_checks(config: Config, *, proxy_url: str | None = None,
               control_url: str | None = None, cafile: str | None = None) -> list[Check]:
    """Every check, in the order a reader would fix them."""
    checks = [check_listener(config, "proxy"), check_listener(config, "control"),
              check_data_dir(config), check_secret_files(config)]
    db_check, db = check_database(config)
    checks.append(db_check)
    if db is not None:
        try:
            checks.append(check_clock(db))
            checks.extend(check_audit(config, db))
            checks.extend(check_retention(config, db))
        finally:
            db.dispose()
    else:
        for name in ("clock", "audit.chain", "retention.scheduler"):
            checks.append(Check(name, SKIP, "needs the database"))
    checks.extend([check_provider_keys(config), check_smtp(config), check_policy(config),
                   check_public_url(config)])
    if proxy_url:
        checks.append(check_url("running.proxy", proxy_url, cafile=cafile))
    if control_url:
        checks.append(check_url("running.control", control_url, cafile=cafile))
    return checks


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == FAIL]

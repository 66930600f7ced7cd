"""Account erasure: the person goes, the bookkeeping stays.

Deletion (``accounts.delete_account``) ends access at once. Erasure — by the retention job
once ``retention.deleted_account_erasure_days`` have passed, or at once by an admin — then
removes the personal data: name, email, company, password hash, the 18+ attestation time,
key secret hashes and key names, preferences, sessions and queued messages. The account row
stays as a surrogate so ledger entries (kept forever) and aggregate statistics still add up;
its ``name`` becomes a random label (``erased-…``) that is derived from nothing, so it can't
be linked back to the person. Signing up again with the same email creates a new account.

On SQLite the erasing connection turns on ``secure_delete`` (freed cells are zeroed) and the
WAL is checkpointed and truncated afterwards, so the old values don't linger in the file.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, event, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from control.core import accounts
from control.core.audit import SYSTEM, Action, Actor
from control.core.base import utcnow
from control.core.config import Config
from control.core.context import Ctx
from control.core.db import Database
from control.core.errors import ValidationError
from control.core.models import Account, ApiKey, Notification, RequestRecord, WebSession

log = logging.getLogger("hushgate.erasure")


def surrogate_label() -> str:
    """A random stand-in for the erased person (not derived from anything about them)."""
    return f"erased-{secrets.token_hex(8)}"


def _secure_delete(session: Session) -> None:
    bind = session.get_bind()
    if bind.dialect.name != "sqlite":
        return
    session.execute(text("PRAGMA secure_delete = ON"))
    engine = bind if isinstance(bind, Engine) else bind.engine
    if not session.info.get("hushgate_compact_after_commit"):
        session.info["hushgate_compact_after_commit"] = True
        event.listen(session, "after_commit", lambda _s: compact_sqlite(engine), once=True)


def _scrub(ctx: Ctx, account: Account) -> None:
    session = ctx.session
    _secure_delete(session)
    now = utcnow()
    session.execute(update(ApiKey).where(ApiKey.account_id == account.id)
                    .values(secret_hash=None, name=None))
    session.execute(delete(WebSession).where(WebSession.principal_kind == "account",
                                             WebSession.principal_id == account.id)
                    .execution_options(synchronize_session=False))
    # Messages are rendered from the account at delivery; none can be sent to a surrogate.
    session.execute(delete(Notification).where(Notification.account_id == account.id)
                    .execution_options(synchronize_session=False))
    # Records keep their metadata for statistics; client details (if ever configured) go.
    session.execute(update(RequestRecord)
                    .where(RequestRecord.account_id == account.id,
                           (RequestRecord.client_ip.is_not(None))
                           | (RequestRecord.user_agent.is_not(None)))
                    .values(client_ip=None, user_agent=None)
                    .execution_options(synchronize_session=False))
    account.name = surrogate_label()
    account.email = None
    account.company = None
    account.password_hash = None
    account.adult_attested_at = None
    account.opt_out_non_essential = True  # preferences reset; nothing is ever sent again
    account.status = "erased"
    account.erased_at = account.updated_at = now
    session.flush()
    # No personal data in the event: the id is random, the rest are field names.
    ctx.audit(Action.ACCOUNT_ERASED, "account", account.id,
              fields=["company", "email", "key_names", "key_secret_hashes", "name",
                      "password_hash", "preferences", "sessions"])


def erase_account(ctx: Ctx, account_id: str, *, confirm: bool) -> Account:
    """Erase an account's personal data now (an admin action; ``confirm`` must be True).

    An active or disabled account is deleted first (keys revoked, sessions ended) in the same
    transaction. Erasing an erased account does nothing.
    """
    if confirm is not True:
        raise ValidationError("erasure is irreversible: confirm it explicitly", "confirm")
    account = accounts.get_account(ctx.session, account_id)
    if account.status == "erased":
        return account
    if account.status != "deleted":
        accounts.delete_account(ctx, account.id)
    _scrub(ctx, account)
    return account


def due_for_erasure(session: Session, config: Config, now: datetime | None = None,
                    limit: int | None = None) -> list[str]:
    """Ids of deleted accounts whose grace window has passed."""
    cutoff = (now or utcnow()) - timedelta(days=config.retention["deleted_account_erasure_days"])
    q = (select(Account.id).where(Account.status == "deleted", Account.deleted_at < cutoff)
         .order_by(Account.deleted_at, Account.id))
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))


def count_due(session: Session, config: Config, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - timedelta(days=config.retention["deleted_account_erasure_days"])
    return int(session.scalar(select(func.count()).select_from(Account).where(
        Account.status == "deleted", Account.deleted_at < cutoff)) or 0)


def erase_due_accounts(db: Database, config: Config, *, now: datetime | None = None,
                       dry_run: bool = False, actor: Actor = SYSTEM) -> int:
    """Erase every deleted account past the grace window, one short transaction each.
    Returns how many were erased (or, with ``dry_run``, would be)."""
    now = now or utcnow()
    if dry_run:
        with db.read_transaction() as session:
            return count_due(session, config, now)
    erased = 0
    batch = config.retention["batch_size"]
    while True:
        with db.read_transaction() as session:
            ids = due_for_erasure(session, config, now, limit=batch)
        for account_id in ids:
            with db.transaction() as session:
                ctx = Ctx(session, config, actor)
                account = session.get(Account, account_id)
                if account is not None and account.status == "deleted":
                    _scrub(ctx, account)
                    erased += 1
        if len(ids) < batch:
            break
    return erased


def compact_sqlite(engine: Engine) -> None:
    """Copy the WAL into the database file and truncate it, so erased values (already zeroed
    in the file by ``secure_delete``) no longer sit in old WAL frames. Best effort: a busy
    reader only delays it to the next checkpoint."""
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()  # autocommit at the driver level: no BEGIN around the pragma
    try:
        cur = raw.cursor()
        busy = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        cur.close()
    finally:
        raw.close()
    if busy and busy[0]:
        log.warning("WAL checkpoint after erasure was blocked by a reader; it will be retried")

"""Deletion ends access at once; erasure removes the person and keeps the bookkeeping."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from lifecycle_helpers import add_records, days_ago
from sqlalchemy import select

from control.core import accounts, audit, erasure, keys, retention, wallet
from control.core.errors import InvalidKey, ValidationError
from control.core.models import Account, ApiKey, WebSession

NAME, EMAIL, COMPANY = "Ada Lovelace", "ada@example.com", "Analytical"


@pytest.fixture
def rich_account(db, uow, funded_account):
    """The funded account with a key, a session, usage, a record and a queued message."""
    with uow() as ctx:
        accounts.set_preferences(ctx, funded_account, opt_out_non_essential=False)
        key, raw = keys.create_key(ctx, funded_account, name="laptop key")
        wallet.adjust(ctx, funded_account, -1_000, reason="correction")
    with db.transaction() as s:
        hold = wallet.reserve(s, funded_account, 5_000, key_id=key.key_id)
        wallet.settle(s, hold.id, 1_234, reference="req_1")
        s.add(WebSession(id="a" * 64, principal_kind="account", principal_id=funded_account,
                         last_seen_at=hold.created_at, data={"email": EMAIL}))
    add_records(db, funded_account, [days_ago(1)], key_id=key.key_id,
                client_ip="203.0.113.0/24")
    return funded_account, key.key_id, raw


def _dump(db, db_url: str, backend: str) -> bytes:
    """Everything the database holds, as bytes: the SQLite files or a pg_dump."""
    if backend == "sqlite":
        path = Path(db_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal"))
                        if p.exists())
    pg_dump = shutil.which("pg_dump") or "/usr/lib/postgresql/15/bin/pg_dump"
    out = subprocess.run([pg_dump, "--no-owner", db_url], check=True, capture_output=True,
                         env={**os.environ, "PGCONNECT_TIMEOUT": "10"}, timeout=120)
    return out.stdout


def test_erasure_requires_confirmation(uow, funded_account):
    with uow() as ctx, pytest.raises(ValidationError, match="confirm"):
        erasure.erase_account(ctx, funded_account, confirm=False)


def test_erasure_removes_the_person_and_keeps_the_ledger(db, uow, config, rich_account):
    account_id, key_id, raw = rich_account
    with db.read_transaction() as s:
        balance_before = wallet.get_balance(s, account_id).balance
        entries_before = len(wallet.history(s, account_id))
    with uow() as ctx:
        erasure.erase_account(ctx, account_id, confirm=True)  # active: deleted first
    with db.read_transaction() as s:
        a = s.get(Account, account_id)
        assert a.status == "erased" and a.erased_at is not None and a.deleted_at is not None
        assert (a.email, a.company, a.password_hash, a.adult_attested_at) == (None,) * 4
        assert a.name.startswith("erased-") and NAME not in a.name
        key = s.get(ApiKey, key_id)
        assert key.secret_hash is None and key.name is None and key.status == "revoked"
        assert s.scalars(select(WebSession).where(
            WebSession.principal_id == account_id)).all() == []
        # the ledger and the stats stay, linked to the surrogate row
        bal = wallet.get_balance(s, account_id)
        assert bal.balance == balance_before == wallet.ledger_sum(s, account_id)
        assert len(wallet.history(s, account_id)) == entries_before
        rows = s.execute(select(retention.RequestRecord.account_id,
                                retention.RequestRecord.client_ip)).all()
        assert rows == [(account_id, None)]
        # the key no longer authenticates
    auth = keys.KeyAuthenticator(db.sessions, bcrypt_cost=4)
    with pytest.raises(InvalidKey):
        auth.authenticate(raw)


def test_the_surrogate_is_random_not_derived(uow, db):
    labels = set()
    for i in range(2):
        with uow() as ctx:
            a = accounts.create_account(ctx, name=NAME, email=EMAIL, adult_attested=True)
            erasure.erase_account(ctx, a.id, confirm=True)
            labels.add(a.name)
    assert len(labels) == 2  # same person twice -> two unrelated labels


def test_audit_events_carry_no_personal_data(db, uow, rich_account):
    account_id, _, _ = rich_account
    with uow() as ctx:
        accounts.update_account(ctx, account_id, name="Ada King", company="Babbage & Co")
        erasure.erase_account(ctx, account_id, confirm=True)
    with db.read_transaction() as s:
        events = [audit.event_dict(e) for e in audit.list_events(s, limit=1000)]
    text = repr(events)
    for personal in (NAME, EMAIL, COMPANY, "Ada King", "Babbage", "laptop key"):
        assert personal not in text
    erased = [e for e in events if e["action"] == "account.erased"]
    assert len(erased) == 1 and erased[0]["target_id"] == account_id


def test_signing_up_again_creates_an_unlinked_account(db, uow, rich_account):
    account_id, _, _ = rich_account
    with uow() as ctx:
        erasure.erase_account(ctx, account_id, confirm=True)
    with uow() as ctx:
        new = accounts.create_account(ctx, name=NAME, email=EMAIL, adult_attested=True)
    assert new.id != account_id
    with db.read_transaction() as s:
        assert accounts.get_account(s, EMAIL).id == new.id
        assert wallet.get_balance(s, new.id).balance == 0
        assert wallet.history(s, new.id) == []


def test_erasing_twice_is_harmless(uow, rich_account):
    account_id, _, _ = rich_account
    with uow() as ctx:
        label = erasure.erase_account(ctx, account_id, confirm=True).name
    with uow() as ctx:
        assert erasure.erase_account(ctx, account_id, confirm=True).name == label


def test_deleted_account_is_refused_at_once_and_erased_by_retention(db, uow, config,
                                                                    rich_account):
    account_id, _, raw = rich_account
    with uow() as ctx:
        deleted_at = accounts.delete_account(ctx, account_id).deleted_at
    auth = keys.KeyAuthenticator(db.sessions, bcrypt_cost=4)
    with pytest.raises(InvalidKey):
        auth.authenticate(raw)
    with db.read_transaction() as s:
        assert s.get(Account, account_id).email == EMAIL  # still within the grace window
    report = retention.run_retention(db, config, now=deleted_at + retention.timedelta(days=31))
    assert report.erased_accounts == 1
    with db.read_transaction() as s:
        assert s.get(Account, account_id).email is None


def test_a_database_dump_after_erasure_holds_no_name_or_email(db, db_url, backend, uow,
                                                              rich_account):
    account_id, _, _ = rich_account
    with uow() as ctx:
        accounts.update_account(ctx, account_id, company="Difference Engines")
    before = _dump(db, db_url, backend)
    assert EMAIL.encode() in before  # the check can see it when it's there
    with uow() as ctx:
        erasure.erase_account(ctx, account_id, confirm=True)
    # no dispose(): the erasure itself must have checkpointed and truncated the SQLite WAL
    dump = _dump(db, db_url, backend)
    for personal in (NAME, EMAIL, "Difference Engines", "laptop key"):
        assert personal.encode() not in dump, personal

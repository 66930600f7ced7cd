"""The assembled money path of one proxy process: leases, fallback holds, group commit."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from test_outcomes import assert_books_balance, make_record

from control.core import instances
from control.core.base import utcnow
from control.core.committer import OutcomeJournal
from control.core.errors import InsufficientFunds
from control.core.models import ProxyInstance
from control.core.outcomes import Outcome
from control.core.proxy_money import ProxyMoney


def _wait_for_lease(money, account_id, amount):
    deadline = time.monotonic() + 10
    while money.book.free(account_id) < amount:
        assert time.monotonic() < deadline, "no lease granted"
        time.sleep(0.01)


def test_lease_path_fallback_and_shutdown(db, config, funded_account, tmp_path):
    money = ProxyMoney(db, config, journal_path=str(tmp_path / "j" / "outcomes.jsonl")).start()
    try:
        assert money.reserve_in_memory(funded_account, 1_000) is None  # asks for a lease
        r = money.reserve_hold(funded_account, 1_000, key_id=None, request_id="pm-00000")
        money.finish(r, make_record("pm-00000", funded_account), 900).result(timeout=30)
        _wait_for_lease(money, funded_account, 1_000)
        futures = []
        for i in range(1, 51):
            res = money.reserve_in_memory(funded_account, 1_000)
            assert res is not None and res.ticket is not None
            futures.append(money.finish(res, make_record(f"pm-{i:05d}", funded_account),
                                        900 if i % 10 else 0))
        for f in futures:
            f.result(timeout=30)
        assert money.reserve_in_memory(funded_account, 1, key_budget=5) is None  # budgets
    finally:
        money.close()
    bal = assert_books_balance(db, funded_account)
    assert (bal.balance, bal.held) == (10_000_000 - 900 * 46, 0)
    with db.read_transaction() as s:
        assert instances.live_instances(s) == []


def test_crashed_process_is_charged_by_its_replacement(db, config, funded_account, tmp_path):
    journal = str(tmp_path / "j" / "outcomes.jsonl")
    crashed = ProxyMoney(db, config, journal_path=journal)
    with db.transaction() as s:
        crashed.instance_id = instances.register(s, now=utcnow() - timedelta(seconds=120))
    hold = crashed.reserve_hold(funded_account, 50_000, key_id=None, request_id="cr-00001")
    # Acknowledged (journaled) but never committed: the process was killed right after.
    left = OutcomeJournal(journal)
    left.append([Outcome(make_record("cr-00001", funded_account), charge=42_000,
                         hold_id=hold.hold_id)])
    left.close()
    with db.transaction() as s:  # the housekeeping sweep frees its hold
        assert instances.sweep_dead_instances(s, config.audit_hmac_key(),
                                              dead_after_seconds=30) == 1
        assert s.get(ProxyInstance, crashed.instance_id).status == "expired"
    replacement = ProxyMoney(db, config, journal_path=journal).start()
    try:
        assert replacement.replayed == 1
    finally:
        replacement.close()
    bal = assert_books_balance(db, funded_account)
    assert (bal.balance, bal.held) == (10_000_000 - 42_000, 0)


def test_refused_when_the_funds_are_held(db, config, funded_account):
    money = ProxyMoney(db, config).start()
    try:
        money.reserve_hold(funded_account, 10_000_000, key_id=None, request_id="all-0001")
        with pytest.raises(InsufficientFunds):
            money.reserve_hold(funded_account, 1, key_id=None, request_id="all-0002")
    finally:
        money.close()
    assert assert_books_balance(db, funded_account).held == 0

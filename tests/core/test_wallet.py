"""Wallet ledger, idempotency, holds and the invariants under concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from control.core import keys, wallet
from control.core.base import utcnow
from control.core.errors import (
    BudgetExceeded,
    IdempotencyConflict,
    InsufficientFunds,
    NotFound,
    ValidationError,
)
from control.core.models import Hold, LedgerEntry


def _assert_invariants(db, account_id, debt=False):
    with db.read_transaction() as s:
        bal = wallet.get_balance(s, account_id)
        assert bal.balance == wallet.ledger_sum(s, account_id)
        assert (bal.available < 0) == debt and bal.held >= 0
        open_holds = sum(h.amount for h in s.scalars(
            select(Hold).where(Hold.account_id == account_id, Hold.status == "open")))
        assert bal.held == open_holds
        return bal


def test_topup_idempotency(uow, funded_account, db):
    with uow() as ctx:
        first, created = wallet.topup(ctx, funded_account, 500, idempotency_key="k1")
    with uow() as ctx:
        again, created2 = wallet.topup(ctx, funded_account, 500, idempotency_key="k1")
    assert created and not created2 and again.id == first.id
    with pytest.raises(IdempotencyConflict), uow() as ctx:
        wallet.topup(ctx, funded_account, 501, idempotency_key="k1")
    assert _assert_invariants(db, funded_account).balance == 10_000_500


@pytest.mark.parametrize("amount", [0, -1, 10**16])
def test_topup_refuses_bad_amounts(uow, funded_account, db, amount):
    with pytest.raises(ValidationError), uow() as ctx:
        wallet.topup(ctx, funded_account, amount)
    assert _assert_invariants(db, funded_account).balance == 10_000_000


def test_adjust_requires_reason_and_cannot_go_below_held(uow, funded_account, db):
    with pytest.raises(ValidationError), uow() as ctx:
        wallet.adjust(ctx, funded_account, -5, reason="  ")
    with db.transaction() as s:
        wallet.reserve(s, funded_account, 9_000_000)
    with pytest.raises(InsufficientFunds), uow() as ctx:
        wallet.adjust(ctx, funded_account, -2_000_000, reason="refund error")
    with uow() as ctx:
        wallet.adjust(ctx, funded_account, -1_000_000, reason="goodwill reversal")
    bal = _assert_invariants(db, funded_account)
    assert bal.available == 0
    with pytest.raises(NotFound), uow() as ctx:
        wallet.topup(ctx, "0" * 32, 5)


def test_reserve_settle_release(uow, funded_account, db):
    with db.transaction() as s:
        h1 = wallet.reserve(s, funded_account, 4_000_000, request_id="r1")
        h2 = wallet.reserve(s, funded_account, 4_000_000, request_id="r2")
    with pytest.raises(InsufficientFunds), db.transaction() as s:
        wallet.reserve(s, funded_account, 2_000_001)
    with db.transaction() as s:
        assert wallet.settle(s, h1.id, 1_500_000) == 1_500_000
        assert wallet.settle(s, h1.id, 1_500_000) == 0  # retry never double-charges
        assert wallet.release(s, h2.id)
        assert not wallet.release(s, h2.id)
    bal = _assert_invariants(db, funded_account)
    assert (bal.balance, bal.held) == (8_500_000, 0)


def test_settle_more_than_held_is_charged_in_full_as_debt(uow, funded_account, db):
    """Was: capped at the available balance (3,932,244 due, 10,000 charged)."""
    with db.transaction() as s:
        h = wallet.reserve(s, funded_account, 9_000_000)
        other = wallet.reserve(s, funded_account, 1_000_000)
    with db.transaction() as s:
        assert wallet.settle(s, h.id, 50_000_000) == 50_000_000
    bal = _assert_invariants(db, funded_account, debt=True)
    assert bal.available == -41_000_000 and bal.held == 1_000_000
    with pytest.raises(InsufficientFunds), db.transaction() as s:
        wallet.reserve(s, funded_account, 0)  # an account in debt is refused
    with db.read_transaction() as s:
        debts = wallet.accounts_in_debt(s)
    assert [(d.account_id, d.owed) for d in debts] == [(funded_account, 41_000_000)]
    with db.transaction() as s:
        wallet.release(s, other.id)
    with uow() as ctx:
        wallet.topup(ctx, funded_account, 40_000_001)
    with db.transaction() as s:
        wallet.release(s, wallet.reserve(s, funded_account, 1).id)
    with db.read_transaction() as s:
        assert wallet.accounts_in_debt(s) == []


def test_key_budget(uow, funded_account, db):
    with uow() as ctx:
        key, _ = keys.create_key(ctx, funded_account, budget=1_000)
    with db.transaction() as s:
        h = wallet.reserve(s, funded_account, 800, key_id=key.key_id)
    with pytest.raises(BudgetExceeded), db.transaction() as s:
        wallet.reserve(s, funded_account, 201, key_id=key.key_id)
    with db.transaction() as s:
        assert wallet.settle(s, h.id, 5_000) == 5_000  # charged in full, never capped
    with pytest.raises(BudgetExceeded), db.transaction() as s:
        wallet.reserve(s, funded_account, 1, key_id=key.key_id)
    with db.read_transaction() as s:
        assert s.get(type(key), key.key_id).spent == 5_000
    _assert_invariants(db, funded_account)


def test_sweeper_releases_stale_holds(uow, funded_account, db, config):
    with db.transaction() as s:
        wallet.reserve(s, funded_account, 3_000_000, ttl_seconds=10)
    with db.transaction() as s:
        assert wallet.sweep_expired_holds(s, config.audit_hmac_key()) == 0
        n = wallet.sweep_expired_holds(s, config.audit_hmac_key(),
                                       now=utcnow() + timedelta(seconds=11))
    assert n == 1
    assert _assert_invariants(db, funded_account).held == 0


def test_concurrent_reserves_never_overdraw(uow, funded_account, db):
    """40 threads race for funds that cover exactly 10 holds."""
    amount = 1_000_000
    results: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(40)

    def worker():
        barrier.wait()
        try:
            with db.transaction() as s:
                h = wallet.reserve(s, funded_account, amount)
            with db.transaction() as s:
                wallet.settle(s, h.id, amount)
            outcome = "ok"
        except InsufficientFunds:
            outcome = "refused"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 10 and results.count("refused") == 30
    bal = _assert_invariants(db, funded_account)
    assert bal.balance == 0


def test_concurrent_idempotent_topups_credit_once(uow, funded_account, db):
    errors: list[Exception] = []

    def worker():
        try:
            with uow() as ctx:
                wallet.topup(ctx, funded_account, 777, idempotency_key="same")
        except IdempotencyConflict as exc:  # a loser of the race may be told to retry
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.read_transaction() as s:
        n = len(list(s.scalars(select(LedgerEntry).where(
            LedgerEntry.idempotency_key == "same"))))
    assert n == 1
    assert _assert_invariants(db, funded_account).balance == 10_000_777


def test_rows_loaded_earlier_in_the_session_are_not_stale_after_reserve_and_settle(
        uow, funded_account, db):
    from control.core.models import ApiKey, Wallet

    with uow() as ctx:
        key, _ = keys.create_key(ctx, funded_account, budget=10_000)
    with db.transaction() as s:
        w = s.get(Wallet, funded_account)
        k = s.get(ApiKey, key.key_id)
        before = w.balance
        h = wallet.reserve(s, funded_account, 1_000, key_id=key.key_id)
        assert (w.held, k.budget_held) == (1_000, 1_000)
        assert wallet.settle(s, h.id, 400) == 400
        assert (w.balance, w.held, k.spent, k.budget_held) == (before - 400, 0, 400, 0)
        h2 = wallet.reserve(s, funded_account, 50, key_id=key.key_id)
        assert wallet.release(s, h2.id) and (w.held, k.budget_held) == (0, 0)
    _assert_invariants(db, funded_account)

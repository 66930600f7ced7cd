"""Balance leases: in-memory spending inside escrow, and zero overspend across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_outcomes import assert_books_balance, make_record

from control.core import instances, leases, outcomes, wallet
from control.core.errors import InsufficientFunds, NotFound
from control.core.leases import LeaseBook, LeaseGrant
from control.core.outcomes import Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_book_reserves_only_inside_its_lease():
    book = LeaseBook(lease_size=1000)
    assert book.try_reserve("a", 10) is None  # no lease yet: a miss asks for a refill
    assert book.refills()[0].want == 1000
    assert book.refills() == []  # one grant in flight per account
    book.apply_grant(LeaseGrant("a", "L1", 300, 300))
    tickets = [book.try_reserve("a", 100) for _ in range(3)]
    assert all(tickets) and book.try_reserve("a", 1) is None
    assert book.finish(tickets[0], 40) == 40  # consumed from the lease
    assert book.free("a") == 60
    assert book.finish(tickets[1], 250) == 100  # beyond its reservation: the rest elsewhere
    book.finish(tickets[2], 0)
    assert book.free("a") == 160


def test_book_gives_back_idle_surplus_and_forgets_a_lost_lease():
    clock = Clock()
    book = LeaseBook(lease_size=1000, idle_seconds=30, clock=clock)
    book.apply_grant(LeaseGrant("a", "L1", 500, 500))
    book.try_reserve("a", 100)
    assert book.take_surplus() == []  # still in use
    clock.now = 31
    assert book.take_surplus() == [("a", "L1", 400)]
    assert book.free("a") == 0
    book.restore("a", "L1", 400)  # the database return failed
    assert book.free("a") == 400
    book.lease_lost("a")
    assert book.try_reserve("a", 1) is None


def test_book_is_thread_safe():
    book = LeaseBook(lease_size=10**9)
    book.apply_grant(LeaseGrant("a", "L1", 100_000, 100_000))
    got = []

    def spend():
        for _ in range(20_000):
            t = book.try_reserve("a", 7)
            if t is not None:
                got.append(book.finish(t, 7))

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(got) == 100_000 - 100_000 % 7 and book.free("a") == 100_000 % 7


def test_grant_is_conditional_and_shrinks_near_the_end(db, funded_account):
    with db.transaction() as s:
        inst = instances.register(s)
        g = leases.grant_lease(s, funded_account, inst, 8_000_000)
        assert g.granted == 5_000_000  # half of what is available
        g2 = leases.grant_lease(s, funded_account, inst, 8_000_000, lease_id=g.lease_id)
        assert (g2.granted, g2.amount) == (2_500_000, 7_500_000)
        assert leases.grant_lease(s, funded_account, inst, 10, minimum=2_500_001).granted == 0
        wallet.reserve(s, funded_account, 2_500_000)  # the exact per-request hold still fits
        with pytest.raises(InsufficientFunds):
            wallet.reserve(s, funded_account, 1)
        assert leases.return_lease(s, funded_account, g.lease_id, 1_000_000) == 1_000_000
        bal = wallet.get_balance(s, funded_account)  # what a user sees: held, and why
        assert (bal.held, bal.leased) == (9_000_000, 6_500_000)
        with pytest.raises(NotFound):
            leases.grant_lease(s, funded_account, "other", 1, lease_id=g.lease_id)
    assert assert_books_balance(db, funded_account).available == 1_000_000


def spend_until_empty(db, account_id, cost, book, inst, n_threads, prefix):
    """Threads spend through one book (one process) until refused; a refused thread gives
    back the book's free part and stops only once the account can't fund another request.
    Returns the request ids charged."""
    successes, lock, seq = [], threading.Lock(), iter(range(10**9))

    def refill():
        for r in book.refills():
            try:
                with db.transaction() as s:
                    book.apply_grant(leases.grant_lease(s, r.account_id, inst, r.want,
                                                        lease_id=r.lease_id, minimum=cost))
            except NotFound:
                book.lease_lost(r.account_id)
            except BaseException:
                book.refill_failed(r.account_id)
                raise

    def give_back():
        for account, lease_id, amount in book.take_surplus(idle_only=False):
            with db.transaction() as s:
                leases.return_lease(s, account, lease_id, amount)

    def charge(outcome):
        with db.transaction() as s:
            assert outcomes.settle_outcomes(s, [outcome]).charged == {
                outcome.request_id: cost}
        with lock:
            successes.append(outcome.request_id)

    def worker():
        while True:
            with lock:
                rid = f"{prefix}-{next(seq):06d}"
            ticket = book.try_reserve(account_id, cost)
            if ticket is None:
                refill()
                ticket = book.try_reserve(account_id, cost)
            if ticket is not None:
                consumed = book.finish(ticket, cost)
                charge(Outcome(make_record(rid, account_id), charge=cost,
                               lease_id=ticket.lease_id, lease_amount=consumed))
                continue
            try:  # near the end: an exact per-request hold
                with db.transaction() as s:
                    hold = wallet.reserve(s, account_id, cost, instance_id=inst)
            except InsufficientFunds:
                give_back()
                with db.read_transaction() as s:
                    if wallet.get_balance(s, account_id).available < cost:
                        return
                continue
            charge(Outcome(make_record(rid, account_id), charge=cost, hold_id=hold.id))

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    give_back()
    return successes


def test_books_racing_for_the_last_funds_never_overspend(db, funded_account):
    cost = 70_001  # 10,000,000 funds exactly 142 requests, with 58,858 left over
    books = [LeaseBook(lease_size=2_000_000) for _ in range(3)]
    with db.transaction() as s:
        ids = [instances.register(s) for _ in books]
    results, threads = [], []
    for i, (book, inst) in enumerate(zip(books, ids, strict=True)):
        threads.append(threading.Thread(target=lambda b=book, n=inst, p=f"race{i}": results.extend(
            spend_until_empty(db, funded_account, cost, b, n, 3, p))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.transaction() as s:
        for inst in ids:
            instances.deregister(s, inst)
    successes = results
    assert len(successes) == len(set(successes)) == 10_000_000 // cost
    bal = assert_books_balance(db, funded_account)
    assert (bal.balance, bal.held) == (10_000_000 % cost, 0)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_two_processes_racing_for_the_last_funds_never_overspend(db, db_url, funded_account):
    cost = 90_001  # 10,000,000 funds exactly 111 requests
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, __file__, db_url, funded_account, str(cost),
                               f"proc{i}"], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=Path(__file__).parent) for i in range(2)]
    try:
        counts = [int(p.communicate(timeout=240)[0].split()[-1]) for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert sum(counts) == 10_000_000 // cost
    bal = assert_books_balance(db, funded_account)
    assert (bal.balance, bal.held) == (10_000_000 % cost, 0)


def _process_main(url, account_id, cost, prefix):
    from control.core.db import Database

    db = Database(url, pool_size=4)
    with db.transaction() as s:
        inst = instances.register(s)
    book = LeaseBook(lease_size=2_000_000)
    done = spend_until_empty(db, account_id, int(cost), book, inst, 3, prefix)
    with db.transaction() as s:
        instances.deregister(s, inst)
    db.dispose()
    print(len(done), flush=True)


if __name__ == "__main__":
    _process_main(*sys.argv[1:5])

"""Batched exactly-once settlement: charge and record together; replays; debt; live holds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from control.core import instances, leases, outcomes, records, wallet
from control.core.audit import Action
from control.core.base import utcnow
from control.core.errors import InsufficientFunds
from control.core.models import AuditEvent, Hold, LedgerEntry, ProxyInstance, RequestRecord
from control.core.outcomes import Outcome


def make_record(request_id: str, account_id: str | None, **fields) -> dict:
    rec = {"time": utcnow(), "request_id": request_id, "account_id": account_id,
           "key_id": None, "endpoint": "chat.completions", "method": "POST",
           "provider": "simulator", "model": "sim-gpt", "stream": False, "status": 200,
           "error_type": None, "input_tokens": 10, "output_tokens": 20, "cached_tokens": 0,
           "estimated": False, "cost": 0, "latency_ms": 5, "ttfb_ms": 2, "upstream_ms": 3,
           "request_bytes": 100, "response_bytes": 200, "client_ip": None, "user_agent": None}
    rec.update(fields)
    return rec


def assert_books_balance(db, account_id):
    """balance == Σ ledger; every usage charge has its record and vice versa."""
    with db.read_transaction() as s:
        bal = wallet.get_balance(s, account_id)
        assert bal.balance == wallet.ledger_sum(s, account_id)
        charges = dict(s.execute(select(LedgerEntry.reference, -LedgerEntry.amount).where(
            LedgerEntry.account_id == account_id, LedgerEntry.kind == "usage")).all())
        recs = dict(s.execute(select(RequestRecord.request_id, RequestRecord.cost).where(
            RequestRecord.account_id == account_id, RequestRecord.cost > 0)).all())
        assert charges == recs
        open_holds = s.scalar(select(func.coalesce(func.sum(Hold.amount), 0)).where(
            Hold.account_id == account_id, Hold.status == "open"))
        assert bal.held == open_holds + leases.open_leases(s, account_id)
        return bal


def count_statements(db):
    seen = []

    def before(conn, cursor, statement, params, context, executemany):
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "SAVEPOINT",
                                                       "RELEASE")):
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    return seen, lambda: event.remove(db.engine, "before_cursor_execute", before)


def test_batch_charges_closes_and_records_once(db, funded_account):
    with db.transaction() as s:
        holds = [wallet.reserve(s, funded_account, 100_000, request_id=f"req-{i:04d}").id
                 for i in range(5)]
    batch = [Outcome(make_record(f"req-{i:04d}", funded_account), charge=1000 * (i + 1),
                     hold_id=holds[i]) for i in range(4)]
    batch.append(Outcome(make_record("req-0004", funded_account, status=502), charge=0,
                         hold_id=holds[4]))
    with db.transaction() as s:
        done = outcomes.settle_outcomes(s, batch)
    assert done.charged == {f"req-{i:04d}": 1000 * (i + 1) for i in range(4)}
    assert not done.skipped and not done.debt
    bal = assert_books_balance(db, funded_account)
    assert (bal.balance, bal.held) == (10_000_000 - 10_000, 0)
    with db.transaction() as s:  # the same batch again (a replay, a retried commit)
        again = outcomes.settle_outcomes(s, batch)
    assert again.charged == {} and len(again.skipped) == 5
    assert assert_books_balance(db, funded_account) == bal
    with db.read_transaction() as s:
        stored = {r.request_id: (r.cost, r.status, r.debt) for r in s.scalars(
            select(RequestRecord))}
        statuses = dict(s.execute(select(Hold.request_id, Hold.status)).all())
    assert stored["req-0003"] == (4000, 200, False) and stored["req-0004"] == (0, 502, False)
    assert statuses["req-0004"] == "released" and statuses["req-0000"] == "settled"
    with db.read_transaction() as s:
        for r in s.scalars(select(RequestRecord)):
            records.validate_record(records.record_dict(r))


def test_statements_per_batch_do_not_grow_with_its_size(db, funded_account):
    counts = []
    for size, start in ((1, 0), (50, 100)):
        with db.transaction() as s:
            holds = [wallet.reserve(s, funded_account, 1000).id for _ in range(size)]
        batch = [Outcome(make_record(f"stmt-{start + i:05d}", funded_account), charge=10,
                         hold_id=holds[i]) for i in range(size)]
        seen, stop = count_statements(db)
        try:
            with db.transaction() as s:
                outcomes.settle_outcomes(s, batch)
        finally:
            stop()
        counts.append(len(seen))
    assert counts[0] == counts[1] <= 7
    assert_books_balance(db, funded_account)


def test_charge_beyond_hold_and_balance_is_debt_and_refuses_the_account(db, uow,
                                                                      funded_account):
    with db.transaction() as s:
        hold = wallet.reserve(s, funded_account, 10_000)
        wallet.reserve(s, funded_account, 9_980_000)  # the rest is held by another request
    with db.transaction() as s:
        done = outcomes.settle_outcomes(s, [Outcome(make_record("debt-0001", funded_account),
                                                    charge=3_932_244, hold_id=hold.id)])
    assert done.charged == {"debt-0001": 3_932_244}  # in full, not 10,000
    assert done.debt == {"debt-0001": 3_932_244 - 10_000 - 10_000}
    bal = assert_books_balance(db, funded_account)
    assert bal.available == -(3_932_244 - 20_000)
    with db.read_transaction() as s:
        assert s.scalar(select(RequestRecord.debt)) is True
        assert [d.owed for d in wallet.accounts_in_debt(s)] == [3_912_244]
    with pytest.raises(InsufficientFunds), db.transaction() as s:
        wallet.reserve(s, funded_account, 1)
    with uow() as ctx:
        wallet.topup(ctx, funded_account, 3_912_245)
    with db.transaction() as s:
        wallet.reserve(s, funded_account, 1)


def test_live_instance_keeps_its_hold_for_a_20_minute_stream(db, config, funded_account):
    start = utcnow()
    with db.transaction() as s:
        inst = instances.register(s, now=start)
        hold = wallet.reserve(s, funded_account, 50_000, instance_id=inst, ttl_seconds=60)
    for minute in range(1, 21):  # heartbeats every minute of a 20-minute stream
        at = start + timedelta(minutes=minute)
        with db.transaction() as s:
            assert instances.heartbeat(s, inst, now=at)
            assert wallet.sweep_expired_holds(s, config.audit_hmac_key(), now=at) == 0
            assert instances.sweep_dead_instances(s, config.audit_hmac_key(),
                                                  dead_after_seconds=30, now=at) == 0
    with db.transaction() as s:
        done = outcomes.settle_outcomes(s, [Outcome(make_record("long-0001", funded_account,
                                                                stream=True),
                                                    charge=48_000, hold_id=hold.id)])
    assert done.charged == {"long-0001": 48_000}
    assert assert_books_balance(db, funded_account).balance == 10_000_000 - 48_000


def test_dead_instance_loses_holds_and_leases_but_its_outcomes_still_charge(db, config,
                                                                          funded_account):
    start = utcnow()
    with db.transaction() as s:
        dead = instances.register(s, now=start)
        live = instances.register(s, now=start)
        h_dead = wallet.reserve(s, funded_account, 70_000, instance_id=dead)
        h_live = wallet.reserve(s, funded_account, 30_000, instance_id=live)
        grant = leases.grant_lease(s, funded_account, dead, 1_000_000)
    assert grant.granted == 1_000_000
    later = start + timedelta(seconds=31)
    with db.transaction() as s:
        assert instances.heartbeat(s, live, now=later)
        assert instances.sweep_dead_instances(s, config.audit_hmac_key(),
                                              dead_after_seconds=30, now=later) == 1
    with db.read_transaction() as s:
        assert s.get(ProxyInstance, dead).status == "expired"
        assert s.get(Hold, h_dead.id).status == "released"
        assert s.get(Hold, h_live.id).status == "open"
        event_ = s.scalars(select(AuditEvent).where(
            AuditEvent.action == Action.PROXY_INSTANCE_EXPIRED.value)).one()
        assert event_.target_id == dead and event_.details["leases_released"] == 1
        assert event_.details["amount_released"] == 1_070_000
    assert assert_books_balance(db, funded_account).held == 30_000
    with db.transaction() as s:
        assert not instances.heartbeat(s, dead)  # it must drop its leases and re-register
    # The dead process's journal is replayed by its replacement: charged in full anyway.
    with db.transaction() as s:
        done = outcomes.settle_outcomes(s, [
            Outcome(make_record("dead-0001", funded_account), charge=65_000,
                    hold_id=h_dead.id),
            Outcome(make_record("dead-0002", funded_account), charge=4_000,
                    lease_id=grant.lease_id, lease_amount=5_000)])
    assert done.charged == {"dead-0001": 65_000, "dead-0002": 4_000} and not done.debt
    bal = assert_books_balance(db, funded_account)
    assert (bal.balance, bal.held) == (10_000_000 - 69_000, 30_000)


def test_late_hold_of_a_dead_instance_is_released_next_sweep(db, config, funded_account):
    start = utcnow()
    with db.transaction() as s:
        inst = instances.register(s, now=start)
        assert instances.sweep_dead_instances(s, config.audit_hmac_key(),
                                              dead_after_seconds=30,
                                              now=start + timedelta(seconds=60)) == 1
        wallet.reserve(s, funded_account, 5_000, instance_id=inst)  # in flight at the sweep
    with db.transaction() as s:
        instances.sweep_dead_instances(s, config.audit_hmac_key(), dead_after_seconds=30)
    assert assert_books_balance(db, funded_account).held == 0


def test_deregister_releases_what_is_left(db, funded_account):
    with db.transaction() as s:
        inst = instances.register(s)
        wallet.reserve(s, funded_account, 5_000, instance_id=inst)
        leases.grant_lease(s, funded_account, inst, 50_000)
    with db.transaction() as s:
        assert instances.deregister(s, inst) == 1
        assert instances.live_instances(s) == []
    assert assert_books_balance(db, funded_account).held == 0


def test_outcome_journal_form_round_trips():
    o = Outcome(make_record("json-0001", "a" * 32), charge=5, lease_id="l" * 32,
                lease_amount=7, estimated=True)
    back = Outcome.from_json(o.to_json())
    assert back.to_json() == o.to_json() and back.charge == 5 and back.estimated


def test_uncharged_requests_inside_a_lease_are_recorded(db, funded_account):
    """A batch of refused/failed requests that reserved in a lease (charge 0) consumes
    nothing from the lease: it used to run an empty executemany and fail every time."""
    with db.transaction() as s:
        inst = instances.register(s)
        grant = leases.grant_lease(s, funded_account, inst, 50_000)
    batch = [Outcome(make_record(f"free-{i}", funded_account, status=502), charge=0,
                     lease_id=grant.lease_id, lease_amount=0) for i in range(3)]
    with db.transaction() as s:
        done = outcomes.settle_outcomes(s, batch)
    assert done.charged == {}
    with db.read_transaction() as s:
        assert s.scalar(select(func.count()).select_from(RequestRecord)) == 3
        assert leases.open_leases(s, funded_account) == 50_000
    assert_books_balance(db, funded_account)

"""Group commit: many finished requests share one transaction; the journal survives a crash."""

from __future__ import annotations

import stat
import threading

from sqlalchemy import select
from test_outcomes import assert_books_balance, make_record

from control.core import instances, wallet
from control.core.committer import OutcomeCommitter, OutcomeJournal
from control.core.housekeeping import Housekeeping
from control.core.outcomes import Outcome


def _held_outcomes(db, account_id, n, prefix):
    with db.transaction() as s:
        holds = [wallet.reserve(s, account_id, 1_000).id for _ in range(n)]
    return [Outcome(make_record(f"{prefix}-{i:05d}", account_id), charge=100 + i,
                    hold_id=holds[i]) for i in range(n)]


def test_concurrent_submissions_share_batches(db, funded_account):
    committer = OutcomeCommitter(db, max_wait_ms=20).start()
    batch = _held_outcomes(db, funded_account, 60, "gc")
    futures, lock = [], threading.Lock()

    def submit(part):
        for o in part:
            f = committer.submit(o)
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=submit, args=(batch[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in futures:
        f.result(timeout=30)
    committer.close()
    assert committer.committed == 60 and committer.batches < 60
    bal = assert_books_balance(db, funded_account)
    assert (bal.balance, bal.held) == (10_000_000 - sum(100 + i for i in range(60)), 0)


def test_a_waiter_that_goes_away_stops_nothing(db, funded_account, tmp_path):
    """A client that disconnects while its charge is being made durable cancels the task
    awaiting it; the committer commits it anyway and goes on with the next ones."""
    import asyncio

    committer = OutcomeCommitter(db, journal=OutcomeJournal(tmp_path / "j.jsonl")).start()
    outcomes = _held_outcomes(db, funded_account, 3, "gone")

    async def main():
        waiter = asyncio.ensure_future(asyncio.wrap_future(committer.submit(outcomes[0])))
        await asyncio.sleep(0)
        waiter.cancel()
        for o in outcomes[1:]:
            await asyncio.wrap_future(committer.submit(o))

    asyncio.run(main())
    assert committer.drain(10) and committer.alive
    committer.close()
    bal = assert_books_balance(db, funded_account)
    assert (bal.balance, bal.held) == (10_000_000 - 100 - 101 - 102, 0)


def test_journal_replay_after_a_crash_charges_exactly_once(db, funded_account, tmp_path):
    path = tmp_path / "journal" / "outcomes.jsonl"
    journal = OutcomeJournal(path)
    outcomes = _held_outcomes(db, funded_account, 5, "crash")
    journal.append(outcomes[:3])  # acknowledged, then the process died before the commit
    with path.open("ab") as fh:
        fh.write(b'{"record": {"request_id": "torn')  # a torn write: never acknowledged
    journal.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for expected in (3, 0):  # the replacement replays; a second start-up replays nothing
        again = OutcomeJournal(path)
        committer = OutcomeCommitter(db, journal=again)
        assert committer.replay() == expected
        again.close()
    committer = OutcomeCommitter(db, journal=OutcomeJournal(path)).start()
    for o in outcomes:  # the first three again (a retry) and two new ones
        committer.submit(o).result(timeout=30)
    committer.close()
    bal = assert_books_balance(db, funded_account)
    assert bal.balance == 10_000_000 - sum(100 + i for i in range(5)) and bal.held == 0
    assert path.stat().st_size == 0  # everything committed: the journal is empty


def test_housekeeping_sweeps_dead_instances(db, config, funded_account):
    from datetime import timedelta

    from control.core.base import utcnow

    with db.transaction() as s:
        inst = instances.register(s, now=utcnow() - timedelta(seconds=120))
        wallet.reserve(s, funded_account, 5_000, instance_id=inst)
    keeper = Housekeeping(db, config)
    keeper.sweep_instances()
    assert keeper.last_instances_expired == 1
    assert assert_books_balance(db, funded_account).held == 0


def test_a_poison_outcome_is_isolated_charged_by_the_fallback_or_kept(db, funded_account,
                                                                     tmp_path):
    """A batch that always fails on one outcome used to be retried forever (every other
    request in it waiting): it is split; the others commit; the poison one is charged with
    a minimal record, or, if even that fails, kept in the rejected file by request id."""
    from control.core.models import RequestRecord

    good = _held_outcomes(db, funded_account, 6, "ok")
    bad_record = Outcome(make_record("bad-record", funded_account, time="not a time"),
                         charge=77)  # the record can't be stored
    no_wallet = Outcome(make_record("bad-wallet", "f" * 32), charge=5)  # no such account
    path = tmp_path / "j" / "0.jsonl"
    committer = OutcomeCommitter(db, journal=OutcomeJournal(path), max_wait_ms=50).start()
    futures = [committer.submit(o) for o in [*good[:3], bad_record, no_wallet, *good[3:]]]
    for f in futures:
        f.result(timeout=30)
    assert committer.drain(30)
    committer.close()
    assert committer.rejected == 1
    with db.read_transaction() as s:
        stored = dict(s.execute(select(RequestRecord.request_id, RequestRecord.cost)).all())
    assert {o.request_id for o in good} | {"bad-record"} == set(stored)
    assert stored["bad-record"] == 77  # charged in full, with a minimal record
    rejected = path.with_suffix(".rejected").read_text().splitlines()
    assert len(rejected) == 1 and '"bad-wallet"' in rejected[0]
    assert stat.S_IMODE(path.with_suffix(".rejected").stat().st_mode) == 0o600
    assert_books_balance(db, funded_account)

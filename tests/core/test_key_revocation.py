"""Revocation within 2 s, always; a hot key never pays bcrypt again.

Bound checks here are correctness bounds (the 2-second promise), not speed measurements:
each records when a revocation committed and the start of every later accepted check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from control.core import accounts, keys
from control.core.errors import AccountInactive, InvalidKey, KeyRevoked

PROMISE = 2.0  # seconds: a change is honoured by every proxy within this


def _make_keys(uow, account_id, n):
    out = []
    with uow() as ctx:
        for _ in range(n):
            key, raw = keys.create_key(ctx, account_id)
            out.append((key.key_id, raw))
    return out


def test_revocation_during_the_bcrypt_check_is_not_cached(uow, funded_account, db,
                                                          monkeypatch):
    """Was: the principal was cached without re-reading the counter after bcrypt."""
    (key_id, raw), = _make_keys(uow, funded_account, 1)
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, poll_seconds=0.5)
    real = keys.bcrypt.checkpw

    def checkpw_then_revoke(secret, hashed):
        ok = real(secret, hashed)
        with uow() as ctx:  # lands while the check runs
            keys.revoke_key(ctx, key_id)
        return ok

    monkeypatch.setattr(keys.bcrypt, "checkpw", checkpw_then_revoke)
    with pytest.raises(KeyRevoked):
        auth.authenticate(raw)
    monkeypatch.setattr(keys.bcrypt, "checkpw", real)
    with pytest.raises(KeyRevoked):
        auth.cached(raw)  # remembered as revoked, never as a success
    with pytest.raises(KeyRevoked):
        auth.authenticate(raw)
    assert auth.bcrypt_checks == 1


def test_the_poller_reports_how_long_a_revocation_took_to_arrive(uow, funded_account, db):
    """The propagation delay operators graph (hushgate_proxy_revocation_propagation_seconds):
    from the key's revoked_at to this process refusing it, once per revocation."""
    (key_id, raw), (_, other) = _make_keys(uow, funded_account, 2)
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, poll_seconds=0.5)
    seen: list[float] = []
    auth.on_revocation = seen.append
    auth.authenticate(raw)
    auth.authenticate(other)
    auth.poll()
    with uow() as ctx:
        keys.revoke_key(ctx, key_id)
    time.sleep(0.2)
    auth.poll()
    with pytest.raises(KeyRevoked):
        auth.cached(raw)
    assert len(seen) == 1 and 0.2 <= seen[0] < PROMISE
    auth.poll()  # nothing new changed: nothing reported again
    with uow() as ctx:
        keys.create_key(ctx, funded_account)  # the counter moves, no revocation
    auth.poll()
    assert len(seen) == 1


def test_hot_key_pays_bcrypt_once_whatever_changes_elsewhere(uow, funded_account, db):
    """Was: every ``ttl_seconds`` and every change of any key cost a new bcrypt check."""
    (key_id, raw), *others = _make_keys(uow, funded_account, 4)
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, ttl_seconds=0.01,
                                 poll_seconds=0.05)
    first = auth.authenticate(raw)
    for other_id, _ in others:  # changes to other keys
        with uow() as ctx:
            keys.revoke_key(ctx, other_id)
        time.sleep(0.02)  # past the old TTL
        assert auth.authenticate(raw).key_id == key_id
    auth.poll()
    assert auth.cached(raw) == first  # the fast path, no I/O
    assert auth.bcrypt_checks == 1


def test_fast_path_refuses_to_serve_when_polls_stop(uow, funded_account, db):
    (_, raw), = _make_keys(uow, funded_account, 1)
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, poll_seconds=0.1)
    auth.authenticate(raw)
    assert auth.cached(raw) is not None
    time.sleep(0.35)  # no poll for longer than the staleness bound (3 x poll)
    assert auth.cached(raw) is None  # falls back to the slow path, which polls
    assert auth.authenticate(raw) and auth.bcrypt_checks == 1


def test_disabled_account_is_refused_on_the_fast_path(uow, funded_account, db):
    (_, raw), = _make_keys(uow, funded_account, 1)
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, poll_seconds=0.05).start()
    try:
        auth.authenticate(raw)
        with uow() as ctx:
            accounts.set_account_status(ctx, funded_account, "disabled")
        deadline = time.monotonic() + PROMISE
        while auth.cached(raw) is not None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(AccountInactive):
            auth.authenticate(raw)
    finally:
        auth.stop()


def _verify_loop(auth, raws, stop, last_ok, lock):
    while not stop.is_set():
        for key_id, raw in raws:
            started = time.monotonic()
            try:
                principal = auth.cached(raw) or auth.authenticate(raw)
            except InvalidKey:
                continue
            assert principal.key_id == key_id
            with lock:
                last_ok[key_id] = max(last_ok.get(key_id, 0.0), started)


def _revoke_burst(uow, key_ids, gap=0.35):
    revoked_at = {}
    for key_id in key_ids:
        with uow() as ctx:
            keys.revoke_key(ctx, key_id)
        revoked_at[key_id] = time.monotonic()  # after the commit
        time.sleep(gap)
    return revoked_at


def test_burst_of_revocations_under_concurrent_verification(uow, funded_account, db):
    pairs = _make_keys(uow, funded_account, 8)
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, poll_seconds=0.5).start()
    for _, raw in pairs:  # cold checks first (the proxy shares concurrent cold checks)
        auth.authenticate(raw)
    stop, lock, last_ok = threading.Event(), threading.Lock(), {}
    threads = [threading.Thread(target=_verify_loop, args=(auth, pairs, stop, last_ok, lock))
               for _ in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        revoked_at = _revoke_burst(uow, [k for k, _ in pairs[:4]])
        time.sleep(PROMISE + 0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        auth.stop()
    for key_id, at in revoked_at.items():
        assert last_ok[key_id] < at + PROMISE, "a revoked key was accepted after 2 s"
    end = time.monotonic()
    for key_id, _ in pairs[4:]:
        assert end - last_ok[key_id] < 1.0  # unchanged keys kept being served
    assert auth.bcrypt_checks == len(pairs)


def _worker(url: str, duration: float) -> None:
    """A separate process: verify the keys on stdin until ``duration`` passes."""
    from control.core.db import Database

    pairs = [tuple(line.split()) for line in sys.stdin.read().splitlines() if line]
    db = Database(url, pool_size=2)
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, poll_seconds=0.5).start()
    stop, lock, last_ok = threading.Event(), threading.Lock(), {}
    thread = threading.Thread(target=_verify_loop, args=(auth, pairs, stop, last_ok, lock))
    thread.start()
    print("ready", flush=True)
    time.sleep(duration)
    stop.set()
    thread.join()
    auth.stop()
    db.dispose()
    print(json.dumps({"last_ok": last_ok, "bcrypt_checks": auth.bcrypt_checks}), flush=True)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_two_processes_refuse_every_revoked_key_within_2s(uow, funded_account, db, db_url):
    pairs = _make_keys(uow, funded_account, 8)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, __file__, db_url, "6.0"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    try:
        for p in procs:
            p.stdin.write("".join(f"{k} {r}\n" for k, r in pairs))
            p.stdin.close()
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        time.sleep(0.8)
        revoked_at = _revoke_burst(uow, [k for k, _ in pairs[:4]])
        results = [json.loads(p.stdout.read()) for p in procs]
        assert [p.wait(30) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
    for result in results:
        for key_id, at in revoked_at.items():
            assert result["last_ok"][key_id] < at + PROMISE
        assert set(result["last_ok"]) == {k for k, _ in pairs}
        assert result["bcrypt_checks"] == len(pairs)


if __name__ == "__main__":
    _worker(sys.argv[1], float(sys.argv[2]))

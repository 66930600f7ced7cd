"""The audit chain: every administrative service appends; appends never fork."""

from __future__ import annotations

import threading

from control.core import accounts, audit, keys, wallet
from control.core.audit import Action, Actor


def test_services_append_a_verifiable_chain(uow, db, config):
    with uow() as ctx:
        a = accounts.create_account(ctx, name="Grace", email="grace@example.com",
                                    adult_attested=True)
        k, raw = keys.create_key(ctx, a.id)
        wallet.topup(ctx, a.id, 1000, idempotency_key="x")
        wallet.adjust(ctx, a.id, -10, reason="correction")
        accounts.update_account(ctx, a.id, company="Navy", name="Grace H")
        keys.revoke_key(ctx, k.key_id)
    with db.read_transaction() as s:
        events = list(reversed(audit.list_events(s)))
        result = audit.verify(s, config.audit_hmac_key())
    assert [e.action for e in events] == [
        "account.created", "key.created", "wallet.topped_up", "wallet.adjusted",
        "account.updated", "key.revoked"]
    assert events[4].details == {"fields": ["company", "name"]}
    assert all(e.actor == "cli:test-admin" for e in events)
    text = repr([audit.event_dict(e) for e in events])
    for secret in (raw, "grace@example.com", "Grace H"):
        assert secret not in text
    assert result.ok and result.checked == 6


def test_a_refused_action_leaves_no_event(uow, db):
    try:
        with uow() as ctx:
            a = accounts.create_account(ctx, name="X", email="x@example.com",
                                        adult_attested=True)
            keys.create_key(ctx, a.id, allowed_models=["nope"])
    except Exception:  # noqa: BLE001 - the refusal itself is tested elsewhere
        pass
    with db.read_transaction() as s:
        assert audit.list_events(s) == []
        assert accounts.list_accounts(s) == []


def test_concurrent_appends_never_fork(db, config):
    def worker(n):
        for i in range(5):
            with db.transaction() as s:
                audit.record(s, config.audit_hmac_key(), Actor("test", str(n)),
                             Action.POLICY_CHANGED, "policy", None, i=i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.read_transaction() as s:
        result = audit.verify(s, config.audit_hmac_key())
    assert result.ok and result.checked == 30 and result.head_seq == 30


def test_verify_with_a_different_key_fails(uow, db):
    with uow() as ctx:
        accounts.create_account(ctx, name="Y", email="y@example.com", adult_attested=True)
    with db.read_transaction() as s:
        result = audit.verify(s, b"k" * 32)
    assert not result.ok and "audit key" in result.problem

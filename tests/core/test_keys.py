"""API key format, lifecycle and authentication."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from control.core import keys
from control.core.base import utcnow
from control.core.errors import (
    AccountInactive,
    InvalidKey,
    KeyExpired,
    KeyRevoked,
    NotFound,
    ValidationError,
)
from control.core.models import ApiKey


def test_generated_key_shape_and_size():
    raw, parsed = keys.generate()
    assert raw.startswith("hg_") and len(raw.encode()) <= 72
    assert keys.parse(raw) == parsed


@pytest.mark.parametrize("mutate", [
    lambda k: "",
    lambda k: "sk_" + k[3:],                      # wrong prefix
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # checksum
    lambda k: k[:10] + ("A" if k[10] != "A" else "B") + k[11:],  # body changed, same checksum
    lambda k: k + "x",                            # length
    lambda k: k.replace("_", "-"),
    lambda k: "hga" + k[2:],                      # admin prefix on the account path
    lambda k: k + "A" * 100,                      # over 72 bytes
    lambda k: k[:20] + "é" + k[21:],
])
def test_malformed_keys_are_rejected_without_io(mutate):
    raw, _ = keys.generate()

    class Exploding:
        def __call__(self):
            raise AssertionError("database touched for a malformed key")

    auth = keys.KeyAuthenticator(Exploding(), bcrypt_cost=4)
    with pytest.raises(InvalidKey):
        auth.authenticate(mutate(raw))


def test_create_key_stores_only_a_hash(uow, funded_account, db):
    with uow() as ctx:
        key, raw = keys.create_key(ctx, funded_account, allowed_models=["sim-gpt"])
    with db.read_transaction() as s:
        row = s.get(ApiKey, key.key_id)
        assert raw not in (row.secret_hash or "")
        assert keys.parse(raw).secret not in row.secret_hash
        assert row.secret_hash.startswith("$2b$04$")
        assert row.display_prefix == f"hg_{key.key_id}_…"
        listed = keys.key_dict(row)
        assert "secret_hash" not in listed and raw not in str(listed)


@pytest.mark.parametrize("kwargs,field", [
    ({"allowed_models": ["no-such-model"]}, "models"),
    ({"allowed_models": []}, "models"),
    ({"expires_at": utcnow() - timedelta(seconds=1)}, "expires_at"),
    ({"rpm_limit": 0}, "rpm_limit"),
    ({"tpm_limit": -5}, "tpm_limit"),
    ({"budget": 0}, "budget"),
    ({"name": "x" * 101}, "name"),
])
def test_create_key_refuses_bad_scopes_and_writes_nothing(uow, funded_account, db, kwargs, field):
    with pytest.raises(ValidationError) as err, uow() as ctx:
        keys.create_key(ctx, funded_account, **kwargs)
    assert err.value.field == field
    with db.read_transaction() as s:
        assert keys.list_keys(s) == []


def test_authenticate_caches_success_and_sees_revocation_from_another_process(
        uow, funded_account, db):
    with uow() as ctx:
        key, raw = keys.create_key(ctx, funded_account)
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, ttl_seconds=300, poll_seconds=0.2)
    first = auth.authenticate(raw)
    assert first.account_id == funded_account
    assert auth.authenticate(raw) is first  # served from the cache
    with uow() as ctx:  # "another process": a separate unit of work
        keys.revoke_key(ctx, key.key_id)
    deadline = time.monotonic() + 2.0
    while True:
        try:
            auth.authenticate(raw)
        except KeyRevoked:
            break
        assert time.monotonic() < deadline, "revocation not seen within 2 s"
        time.sleep(0.05)


def test_wrong_secret_and_unknown_id_are_indistinguishable(uow, funded_account, db):
    with uow() as ctx:
        key, raw = keys.create_key(ctx, funded_account)
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4)
    other, _ = keys.generate()
    wrong_secret = f"hg_{key.key_id}_{keys.parse(other).secret}"
    wrong_secret += keys.checksum(wrong_secret)
    unknown_id = other
    messages = []
    for candidate in (wrong_secret, unknown_id):
        with pytest.raises(InvalidKey) as err:
            auth.authenticate(candidate)
        assert type(err.value) is InvalidKey
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_expired_key_and_inactive_account(uow, funded_account, db):
    from control.core import accounts

    with uow() as ctx:
        key, raw = keys.create_key(ctx, funded_account,
                                   expires_at=utcnow() + timedelta(seconds=1))
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, poll_seconds=0.05)
    auth.authenticate(raw)
    time.sleep(1.05)
    with pytest.raises(KeyExpired):
        auth.authenticate(raw)
    with uow() as ctx:
        _, raw2 = keys.create_key(ctx, funded_account)
        accounts.set_account_status(ctx, funded_account, "disabled")
    time.sleep(0.06)
    with pytest.raises(AccountInactive):
        auth.authenticate(raw2)


def test_rotate_with_and_without_grace(uow, funded_account, db):
    with uow() as ctx:
        old, old_raw = keys.create_key(ctx, funded_account, allowed_models=["sim-gpt"],
                                       rpm_limit=10)
    with uow() as ctx:
        new, new_raw = keys.rotate_key(ctx, old.key_id, grace_seconds=3600)
    auth = keys.KeyAuthenticator(db.readers, bcrypt_cost=4, poll_seconds=0)
    assert auth.authenticate(old_raw).key_id == old.key_id  # grace period
    p = auth.authenticate(new_raw)
    assert p.allowed_models == ("sim-gpt",) and p.rpm_limit == 10
    with uow() as ctx:
        newer, _ = keys.rotate_key(ctx, new.key_id)
    with pytest.raises(KeyRevoked):
        auth.authenticate(new_raw)
    with pytest.raises(ValidationError), uow() as ctx:
        keys.rotate_key(ctx, new.key_id)
    with pytest.raises(NotFound), uow() as ctx:
        keys.revoke_key(ctx, "nope")

"""The data export: one schema-valid document, streamed, with nothing secret in it."""

from __future__ import annotations

import io
import json

import pytest
from lifecycle_helpers import add_records, days_ago

from control.core import accounts, audit, export, keys, wallet
from control.core.errors import NotFound


@pytest.fixture
def exported_account(db, uow, funded_account):
    with uow() as ctx:
        key, raw = keys.create_key(ctx, funded_account, name="ci", allowed_models=["sim-gpt"])
        wallet.adjust(ctx, funded_account, -500, reason="goodwill correction")
        accounts.update_account(ctx, funded_account, company="Engines Ltd")
        other = accounts.create_account(ctx, name="Other", email="o@example.com",
                                        adult_attested=True)
    with db.transaction() as s:
        hold = wallet.reserve(s, funded_account, 2_000, key_id=key.key_id)
        wallet.settle(s, hold.id, 700, reference="req_x")
    add_records(db, funded_account, [days_ago(3), days_ago(2)], key_id=key.key_id)
    add_records(db, other.id, [days_ago(1)])
    return funded_account, key, raw, other.id


def _export(db, config, account_id) -> dict:
    with db.read_transaction() as s:
        text = "".join(export.iter_export(s, config, account_id))
    return json.loads(text)


def test_export_is_valid_and_complete(db, config, exported_account):
    account_id, key, raw, other_id = exported_account
    doc = _export(db, config, account_id)
    export.validator().validate(doc)
    assert doc["account"]["email"] == "ada@example.com"
    assert doc["account"]["company"] == "Engines Ltd"
    assert doc["preferences"] == {"opt_out_non_essential": False}
    assert [k["key_id"] for k in doc["keys"]] == [key.key_id]
    assert [e["kind"] for e in doc["ledger"]] == ["topup", "adjustment", "usage"]
    assert doc["wallet"]["balance"] == sum(e["amount"] for e in doc["ledger"]) == 9_998_800
    assert len(doc["request_records"]) == 2
    assert {r["account_id"] for r in doc["request_records"]} == {account_id}
    actions = [e["action"] for e in doc["audit_events"]]
    assert actions == ["account.created", "wallet.topped_up", "key.created",
                       "wallet.adjusted", "account.updated"]
    assert doc["retention"]["request_records_days"] == 90
    text = json.dumps(doc)
    assert raw not in text and raw.split("_")[2] not in text
    assert "$2b$" not in text  # no bcrypt hash
    assert other_id not in text and "o@example.com" not in text


def test_export_audit_events_validate_against_their_own_schema(db, config, exported_account):
    import jsonschema

    from control.core.config import load_schema

    with db.read_transaction() as s:
        events = [audit.event_dict(e) for e in audit.list_events(s)]
    for e in events:
        jsonschema.validate(e, load_schema("audit-event.schema.json"))


def test_export_streams_in_chunks(db, config, funded_account, monkeypatch):
    monkeypatch.setattr(export, "CHUNK_CHARS", 4096)
    monkeypatch.setattr(export, "BATCH", 100)
    add_records(db, funded_account, [days_ago(1)] * 1500)
    with db.read_transaction() as s:
        chunks = list(export.iter_export(s, config, funded_account))
        # the session holds no more than one batch of objects at any time
        assert len(s.identity_map) <= 100
    assert len(chunks) > 10 and max(len(c) for c in chunks) < 4096 + 2048
    doc = json.loads("".join(chunks))
    export.validator().validate(doc)
    assert len(doc["request_records"]) == 1500


def test_write_export_to_a_file(db, config, exported_account):
    fh = io.StringIO()
    with db.read_transaction() as s:
        n = export.write_export(s, config, exported_account[0], fh)
    assert n == len(fh.getvalue())
    export.validator().validate(json.loads(fh.getvalue()))


def test_export_of_an_erased_account_holds_only_the_surrogate(db, config, uow,
                                                             exported_account):
    from control.core import erasure

    account_id = exported_account[0]
    with uow() as ctx:
        erasure.erase_account(ctx, account_id, confirm=True)
    doc = _export(db, config, account_id)
    export.validator().validate(doc)
    assert doc["account"]["email"] is None and doc["account"]["status"] == "erased"
    assert "ada@example.com" not in json.dumps(doc)


def test_unknown_account(db, config):
    with db.read_transaction() as s, pytest.raises(NotFound):
        list(export.iter_export(s, config, "0" * 32))


def test_exporting_is_audited(db, uow, funded_account):
    with uow() as ctx:
        assert export.audit_export(ctx, "ada@example.com", via="cli") == funded_account
    with db.read_transaction() as s:
        ev = audit.list_events(s, limit=1)[0]
        assert (ev.action, ev.target_id, ev.details) == ("account.exported", funded_account,
                                                         {"via": "cli"})

"""schemas/openapi.json matches the registered /api/v1 routes, and a bounded fuzz of every
operation against a live ControlServer (cheroot on port 0) finds no 5xx or undocumented
status, content type or response shape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from web_helpers import sqlite_only

from control.web.server import ControlServer

DOC = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"
METHODS = {"get", "post", "put", "patch", "delete"}


def _doc() -> dict:
    return json.loads(DOC.read_text())


def _routes(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            out |= {(m.lower(), path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return out


@sqlite_only
def test_every_route_is_documented_and_every_documented_route_exists(app):
    doc = _doc()
    documented = {(m, p) for p, item in doc["paths"].items() for m in item if m in METHODS}
    assert _routes(app) == documented
    assert doc["openapi"].startswith("3.1")


def test_money_moving_operations_require_an_idempotency_key():
    doc = _doc()
    for path, item in doc["paths"].items():
        if path.endswith(("/topup", "/adjust")):
            params = item["post"]["parameters"]
            assert {"$ref": "#/components/parameters/idempotency_key"} in params


@pytest.fixture
def live(config, db, write_token, funded_account):
    server = ControlServer(config, host="127.0.0.1", port=0, db=db, threads=4).start()
    yield server, write_token, funded_account
    server.stop()


FUZZ_CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
               checks.content_type_conformance, checks.response_schema_conformance]


@sqlite_only
def test_fuzz_the_api_bounded(live):
    server, token, account_id = live
    schema = schemathesis.openapi.from_dict(_doc())
    headers = {"Authorization": f"Bearer {token}"}
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) == sum(1 for item in _doc()["paths"].values() for m in item if m in METHODS)
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=6, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            if case.path_parameters and "account_id" in case.path_parameters \
                    and case.path_parameters["account_id"] == "":
                case.path_parameters["account_id"] = account_id
            case.call_and_validate(base_url=server.url, headers=headers, checks=FUZZ_CHECKS)

        run()


def test_the_document_is_served_without_a_token(client):
    resp = client.get("/api/v1/openapi.json")
    assert resp.status_code == 200 and resp.is_json
    assert resp.get_json() == _doc()
    # every operation it lists still needs a token
    assert client.get("/api/v1/me").status_code == 401

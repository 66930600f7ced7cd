"""What the admin pages show: amounts in the audit log in the currency, a legend for the
estimated mark, a readable retention status (no raw keys, no "None")."""

from __future__ import annotations

from control.core import records
from control.core.base import utcnow


def test_audit_amounts_are_in_the_currency(admin, uow, funded_account):
    page = admin.get("/admin/audit").get_data(as_text=True)
    assert 'class="data audit"' in page
    assert "10.00" in page  # the funding top-up, in USD
    assert "10000000" not in page  # not micro-units


def test_the_estimated_mark_has_a_legend(admin, db, funded_account):
    rec = {"time": utcnow(), "request_id": "est-1",
           "account_id": funded_account, "key_id": None, "endpoint": "chat.completions",
           "method": "POST", "provider": "simulator", "model": "sim-gpt", "stream": True,
           "status": 499, "error_type": "client_disconnected", "input_tokens": 3,
           "output_tokens": 4, "cached_tokens": 0, "estimated": True, "cost": 10,
           "latency_ms": 5, "ttfb_ms": 2, "upstream_ms": 3, "request_bytes": 10,
           "response_bytes": 20, "client_ip": None, "user_agent": None}
    with db.transaction() as s:
        records.insert_records(s, [rec])
    page = admin.get("/admin/records").get_data(as_text=True)
    assert "3/4*" in page and "* estimated" in page


def test_retention_status_is_readable(admin):
    page = admin.get("/admin/retention").get_data(as_text=True)
    assert 'id="retention-status"' in page
    assert "None" not in page and "request_records_due" not in page
    assert "Last purge" in page and "never yet" in page

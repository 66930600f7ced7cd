"""The portal's "forgot password" and the page an e-mailed link opens, as the holder uses
them: real Flask app, real SMTP delivery (aiosmtpd), SQLite and PostgreSQL."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from sqlalchemy import select

from control.core import accounts, notify
from control.core.models import AuditEvent
from control.web import create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))
from web_helpers import Browser  # noqa: E402

LINK_RE = re.compile(r"http://\S+(/portal/password/\S+)")
OLD_PW, NEW_PW = "first password 1", "a brand new password 2"


def test_forgot_password_then_the_link_sets_a_new_one_once(mail, db, uow):
    config, inbox = mail
    with uow() as ctx:
        accounts.create_account(ctx, name="Grace", email="grace@example.com",
                                adult_attested=True, password=OLD_PW)
    b = Browser(create_app(config, db, TESTING=True).test_client())
    assert "Forgot password?" in b.get("/portal/login").get_data(as_text=True)
    known = b.post("/portal/forgot", {"email": "grace@example.com"}).get_data(as_text=True)
    unknown = b.post("/portal/forgot", {"email": "nobody@example.com"}).get_data(as_text=True)
    assert 'id="reset-sent"' in known and 'id="reset-sent"' in unknown  # no oracle
    assert notify.deliver_pending(db, config).sent == 1
    (msg,) = inbox.to("grace@example.com")
    path = LINK_RE.search(msg.get_payload(decode=True).decode()).group(1)

    assert "Choose a new password" in b.get(path).get_data(as_text=True)
    differ = b.post(path, {"password": NEW_PW, "password2": NEW_PW + "x"})
    assert differ.status_code == 422 and "differ" in differ.get_data(as_text=True)
    done = b.post(path, {"password": NEW_PW, "password2": NEW_PW})
    assert done.status_code == 302 and done.headers["Location"].endswith("/portal/login")
    assert b.post("/portal/login", {"email": "grace@example.com",
                                    "password": NEW_PW}).status_code == 302
    # the link works once
    again = b.get(path)
    assert again.status_code == 404 and "Ask for a new link" in again.get_data(as_text=True)
    with db.read_transaction() as s:
        actions = list(s.scalars(select(AuditEvent.action)))
    assert actions.count("account.password_reset") == 1


def test_a_forged_link_is_refused(mail, db):
    config, _ = mail
    b = Browser(create_app(config, db, TESTING=True).test_client())
    for token in ("nope", "0" * 32 + ".forged", "\x00", "a" * 500):
        resp = b.get(f"/portal/password/{token}")
        assert resp.status_code in (400, 404), token

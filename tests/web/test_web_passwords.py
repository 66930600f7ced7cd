"""Password management in the admin UI: an operator changes their own password (the other
sessions end, this one stays); an admin sets another operator's, deletes an operator (never
the last admin), and invites a passwordless account holder."""

from __future__ import annotations

from sqlalchemy import select
from web_helpers import ADMIN_PW, Browser, sign_in

from control.core import accounts
from control.core.models import AuditEvent, Notification, User

NEW_PW = "a brand new admin password"


def _actions(db) -> list[str]:
    with db.read_transaction() as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def test_an_operator_changes_their_own_password(app, admin, db):
    other = Browser(app.test_client())
    assert sign_in(other, "root", ADMIN_PW).status_code == 302  # a second session
    wrong = admin.post("/admin/security/password", {"current_password": "nope",
                                                    "password": NEW_PW, "password2": NEW_PW},
                       page="/admin/security")
    assert wrong.status_code == 422 and "current password is wrong" in wrong.get_data(True)
    ok = admin.post("/admin/security/password", {"current_password": ADMIN_PW,
                                                 "password": NEW_PW, "password2": NEW_PW},
                    page="/admin/security")
    assert ok.status_code == 302
    assert admin.get("/admin/").status_code == 200  # this session stays
    assert other.get("/admin/").status_code == 302  # the other one ended
    fresh = Browser(app.test_client())
    assert sign_in(fresh, "root", NEW_PW).status_code == 302
    assert "user.password_changed" in _actions(db)


def test_an_admin_sets_another_operators_password_and_deletes_them(app, admin, db, uow):
    with uow() as ctx:
        ops = accounts.create_user(ctx, username="ops", password="ops password one",
                                   role="viewer").id
    page = admin.get("/admin/operators").get_data(as_text=True)
    assert f"/admin/users/{ops}/password" in page and f"/admin/users/{ops}/delete" in page
    assert admin.post(f"/admin/users/{ops}/password", {"password": "ops password two",
                                                       "password2": "ops password two"},
                      page="/admin/operators").status_code == 302
    viewer = Browser(app.test_client())
    assert sign_in(viewer, "ops", "ops password two").status_code == 302
    # a viewer can't manage operators
    assert viewer.post(f"/admin/users/{ops}/delete", page="/admin/").status_code == 403
    assert admin.post(f"/admin/users/{ops}/delete", page="/admin/operators").status_code == 302
    with db.read_transaction() as s:
        assert s.get(User, ops) is None
    assert viewer.get("/admin/").status_code == 302  # their session ended
    assert "user.deleted" in _actions(db)


def test_an_admin_cannot_delete_themselves(admin, db):
    """(The last-admin rule can only bite from the CLI: an admin in the UI is another enabled
    admin; tests/cli/test_cli.py checks it.)"""
    with db.read_transaction() as s:
        me = s.scalar(select(User.id).where(User.username == "root"))
    refused = admin.post(f"/admin/users/{me}/delete", page="/admin/operators")
    assert refused.status_code == 422
    assert "cannot delete your own" in refused.get_data(as_text=True)
    with db.read_transaction() as s:
        assert s.get(User, me) is not None


def test_an_admin_invites_a_passwordless_account(admin, db, uow):
    with uow() as ctx:
        account_id = accounts.create_account(ctx, name="Invitee", email="inv@example.com",
                                             adult_attested=True).id
    page = admin.get(f"/admin/accounts/{account_id}").get_data(as_text=True)
    assert 'id="invite"' in page
    assert admin.post(f"/admin/accounts/{account_id}/invite",
                      page=f"/admin/accounts/{account_id}").status_code == 302
    with db.read_transaction() as s:
        kinds = list(s.scalars(select(Notification.kind).where(
            Notification.account_id == account_id)))
    assert "account_invite" in kinds and "account.invited" in _actions(db)

"""One audited way to end a principal's sessions, used by every service."""

from __future__ import annotations

from sqlalchemy import select

from control.core import accounts, passwords, sessions
from control.core.models import AuditEvent, WebSession


def test_revoke_principal_keeps_the_session_in_use_and_audits(uow, db):
    with uow() as ctx:
        user = accounts.create_user(ctx, username="ops", password="ops password 1")
        keep = sessions.token_id(sessions.start(ctx.session, "user", user.id))
        sessions.start(ctx.session, "user", user.id)
        sessions.start(ctx.session, sessions.PENDING, user.id)
    with uow() as ctx:
        assert sessions.revoke_principal(ctx, "user", user.id, keep=keep) == 2
    with db.read_transaction() as s:
        live = s.scalars(select(WebSession.id).where(WebSession.revoked_at.is_(None))).all()
        last = s.execute(select(AuditEvent.action, AuditEvent.details)
                         .order_by(AuditEvent.seq.desc()).limit(1)).one()
    assert live == [keep]
    assert last.action == "session.revoked" and last.details == {"count": 2}
    with uow() as ctx:
        assert sessions.revoke_principal(ctx, "user", user.id, keep=keep) == 0  # nothing live


def test_a_new_operator_password_ends_their_sessions(uow, db):
    with uow() as ctx:
        user = accounts.create_user(ctx, username="ops", password="ops password 1")
        sessions.start(ctx.session, "user", user.id)
    with uow() as ctx:
        passwords.set_user_password(ctx, user.id, "ops password 2")
    with db.read_transaction() as s:
        assert s.scalar(select(WebSession.revoked_at)) is not None
        actions = list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))
    assert actions[-2:] == ["user.password_changed", "session.revoked"]

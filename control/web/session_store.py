"""The one cookie: a Flask session interface backed by ``web_sessions``.

Signed-in sessions live server-side (``s.<token>``; the table keeps a SHA-256 of the token),
so logout, timeouts and admin revocation take effect at once. Before sign-in the cookie is
a short signed value (``a.<…>``) holding only the CSRF token, so anonymous page views write
nothing to the database. Signing in always issues a brand-new token (no session fixation).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.datastructures import CallbackDict

from control.core import sessions

COOKIE_NAME = "hushgate_session"


class HushSession(CallbackDict[str, Any], SessionMixin):
    """Session data plus who it belongs to. ``sid`` is None before sign-in."""

    def __init__(self, initial: dict[str, Any] | None = None, *, sid: str | None = None,
                 kind: str | None = None, principal_id: str | None = None,
                 touch: bool = False) -> None:
        def on_update(_: Any) -> None:
            self.modified = True

        super().__init__(initial or {}, on_update)
        self.sid, self.kind, self.principal_id = sid, kind, principal_id
        self.touch = touch
        self.modified = False
        self.new_token: str | None = None
        self.ended = False
        self.drop_cookie = False

    def adopt(self, token: str, sid: str, kind: str, principal_id: str) -> None:
        """Switch to a freshly started server-side session (sign-in)."""
        self.clear()
        self.sid, self.kind, self.principal_id = sid, kind, principal_id
        self.new_token = token
        self.ended = False

    def end(self) -> None:
        """Forget everything and remove the cookie (sign-out)."""
        self.clear()
        self.sid = self.kind = self.principal_id = None
        self.ended = True


class ServerSessionInterface(SessionInterface):
    def __init__(self, hg: Any) -> None:
        self.hg = hg

    def _anon(self, app: Flask) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(app.secret_key, salt="hushgate-anonymous")

    def open_session(self, app: Flask, request: Request) -> HushSession:
        raw = request.cookies.get(COOKIE_NAME) or ""
        if raw.startswith("s."):
            with self.hg.db.read_transaction() as s:
                active = sessions.load(s, self.hg.config, raw[2:])
            if active is not None:
                return HushSession(active.data, sid=active.id, kind=active.kind,
                                   principal_id=active.principal_id,
                                   touch=sessions.needs_touch(active))
            stale = HushSession()
            stale.drop_cookie = True
            return stale
        if raw.startswith("a."):
            max_age = self.hg.config.control["session_absolute_hours"] * 3600
            try:
                data = self._anon(app).loads(raw[2:], max_age=max_age)
            except BadSignature:
                data = None
            if isinstance(data, dict):
                return HushSession(data)
            stale = HushSession()
            stale.drop_cookie = True
            return stale
        return HushSession()

    def _set(self, app: Flask, response: Response, value: str) -> None:
        response.set_cookie(COOKIE_NAME, value, httponly=True, samesite="Lax",
                            secure=self.hg.secure_cookies, path="/")

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, HushSession)
        if session.accessed:
            response.vary.add("Cookie")
        if session.ended:
            response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Lax",
                                   secure=self.hg.secure_cookies)
            return
        if session.sid is not None:
            if session.modified or session.touch or session.new_token:
                with self.hg.db.transaction() as s:
                    sessions.save(s, session.sid,
                                  data=dict(session) if session.modified else None)
            if session.new_token:
                self._set(app, response, "s." + session.new_token)
            return
        if session.modified and session:
            self._set(app, response, "a." + self._anon(app).dumps(dict(session)))
        elif session.drop_cookie:
            response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Lax",
                                   secure=self.hg.secure_cookies)

"""The control plane: a Flask app factory with four blueprints.

``web`` (admin UI under /admin), ``portal`` (account holders under /portal), ``api``
(JSON under /api/v1, admin API tokens) and ``webhooks`` (signed payment events). Nothing is
created at import time; ``create_app(config, db)`` builds everything.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from flask import Flask, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect

from control.core.config import Config
from control.core.db import Database
from control.core.errors import ValidationError
from control.web import validation as checks
from control.web.ext import Hushgate, is_loopback
from control.web.security import add_security_headers
from control.web.session_store import ServerSessionInterface

log = logging.getLogger("hushgate.control")


class ControlApp(Flask):
    """Flask, except that an unhandled exception is logged as its class and the route only.

    Flask's default logs the exception's text and traceback, and those can carry what a user
    sent (an e-mail address in a database error, a form value in a ``ValueError``): never
    request content in a log line. The client gets a generic 500 page or JSON error."""

    def log_exception(self, exc_info: tuple[type[BaseException], BaseException,
                                            TracebackType] | tuple[None, None, None]) -> None:
        rule = request.url_rule.rule if request.url_rule is not None else "?"
        name = exc_info[0].__name__ if exc_info[0] is not None else "error"
        log.error("hushgate: unhandled %s in %s %s", name, request.method, rule)


def create_app(config: Config, db: Database | None = None, **flask_config: Any) -> Flask:
    """Build the control-plane WSGI app for ``config`` (and an existing ``db``, if given)."""
    app = ControlApp(__name__)
    hg = Hushgate(config, db or Database.from_config(config), owns_db=db is None)
    app.extensions["hushgate"] = hg
    app.config.update(
        SECRET_KEY=config.session_secret(),
        SESSION_COOKIE_NAME="hushgate_session",
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        # Referrer-Policy: no-referrer means browsers send no Referer, so Flask-WTF's HTTPS
        # referrer check would refuse every form; the CSRF token + SameSite=Lax protect.
        WTF_CSRF_SSL_STRICT=False,
        MAX_CONTENT_LENGTH=1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.config.update(flask_config)
    app.session_interface = ServerSessionInterface(hg)
    csrf = CSRFProtect(app)

    from control.web import admin, api, metrics, portal, public, webhooks

    app.register_blueprint(public.bp)
    app.register_blueprint(admin.bp, url_prefix="/admin")
    app.register_blueprint(portal.bp, url_prefix="/portal")
    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.register_blueprint(webhooks.bp, url_prefix="/webhooks")
    app.register_blueprint(metrics.bp)
    # Token-authenticated JSON and the signed webhook carry no cookie credentials.
    csrf.exempt(api.bp)
    csrf.exempt(webhooks.bp)

    app.after_request(add_security_headers)

    @app.before_request
    def refuse_unstorable_text() -> Any:
        try:
            checks.check_request(request)
        except ValidationError as exc:
            return page_error(400, f"The request was refused: {exc}.", "bad_request")
        return None

    @app.errorhandler(ValidationError)
    def invalid_input(exc: ValidationError) -> Any:
        return page_error(400, f"The request was refused: {exc}.", "bad_request")

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError) -> tuple[str, int]:
        return render_template("shared/error.html", code=400,
                               message="The form expired or was not sent from this site. "
                                       "Go back, reload the page and try again."), 400

    def page_error(code: int, message: str, slug: str | None = None) -> Any:
        if request.path.startswith(("/api/", "/webhooks/")):
            slug = slug or message.lower().rstrip(".").replace(" ", "_")
            return jsonify({"error": {"code": slug, "message": message, "fields": {}}}), code
        return render_template("shared/error.html", code=code, message=message), code

    @app.errorhandler(404)
    def not_found(exc: Exception) -> Any:
        return page_error(404, "Not found.")

    @app.errorhandler(403)
    def forbidden(exc: Exception) -> Any:
        return page_error(403, "Your role does not allow this.")

    @app.errorhandler(405)
    def not_allowed(exc: Exception) -> Any:
        return page_error(405, "Method not allowed.")

    @app.errorhandler(413)
    def too_large(exc: Exception) -> Any:
        return page_error(413, "Request body too large.")

    @app.errorhandler(500)
    def internal_error(exc: Exception) -> Any:
        return page_error(500, "Something went wrong; the request was not completed.",
                          "internal_error")

    @app.route("/")
    def index() -> Any:
        return redirect(url_for("portal.home"))

    app.jinja_env.globals["hg_currency"] = config.wallet["currency"]
    app.jinja_env.filters["money"] = hg.format_money
    return app


__all__ = ["create_app", "is_loopback"]

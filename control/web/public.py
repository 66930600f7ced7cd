"""Public pages: the privacy policy (rendered from the running configuration) and health."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, render_template

from control.core import policy as policy_service
from control.web.ext import hg

bp = Blueprint("public", __name__, template_folder="templates")


@bp.get("/policy")
def policy() -> Any:
    with hg().reader() as db:
        text = policy_service.render_policy(hg().config, session=db)
    return render_template("shared/policy.html", text=text, config=hg().config, area="public")


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness, and the trivial baseline route the benchmark compares pages against."""
    return Response("ok\n", mimetype="text/plain")

"""``/metrics`` on the control plane (Prometheus). Placeholder: filled in by the
self-hosting work (#12)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("metrics", __name__)

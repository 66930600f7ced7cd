"""Response headers every page and API answer carries."""

from __future__ import annotations

from flask import Response, request

CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"


def add_security_headers(response: Response) -> Response:
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.is_secure:
        # Served over TLS by hushgate itself (control.tls): browsers must never fall back to
        # plain HTTP for this host. Behind a TLS terminator, that terminator sets it.
        h.setdefault("Strict-Transport-Security", "max-age=31536000")
    if not request.path.startswith("/static/"):
        # Pages can show a new key once, or personal data: never cache them.
        h.setdefault("Cache-Control", "no-store")
    return response

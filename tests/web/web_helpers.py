"""Helpers shared by the control-plane tests (importable as ``web_helpers``)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient

ADMIN_PW = "correct horse battery"
VIEWER_PW = "viewer password 1"
HOLDER_PW = "holder password 1"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def csrf_from(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "page has no CSRF token"
    return m.group(1)


class Browser:
    """A test client that fetches a form's CSRF token before posting, like a browser."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(url, **kw)

    def token(self, page: str) -> str:
        resp = self.client.get(page)
        return csrf_from(resp.get_data(as_text=True))

    def post(self, url: str, data: dict[str, Any] | None = None, *, page: str | None = None,
             **kw: Any) -> Any:
        """POST with the CSRF token of ``page`` (default: the URL itself)."""
        token = self.token(page or url)
        return self.client.post(url, data={**(data or {}), "csrf_token": token}, **kw)

    def cookie(self) -> str | None:
        c = self.client.get_cookie("hushgate_session")
        return c.value if c else None



def sign_in(b: Browser, username: str, password: str) -> Any:
    return b.post("/admin/login", {"username": username, "password": password},
                  page="/admin/login")




def config_with(config: Any, **sections: dict[str, Any]) -> Any:
    """A copy of the test config with some sections' keys overridden."""
    import copy

    from control.core.config import load_config

    raw = copy.deepcopy(config.raw)
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return load_config(overrides=raw)

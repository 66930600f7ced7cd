"""Control-plane fixtures: a fresh app per test with CSRF ON, signed-in clients, tokens.

Every fixture here builds on tests/conftest.py (``config``, ``db``, ``uow``), so tests that
use them run on SQLite and PostgreSQL unless they pin ``sqlite_only``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from web_helpers import ADMIN_PW, HOLDER_PW, VIEWER_PW, Browser, sign_in

from control.core import accounts, admin_tokens
from control.core.config import Config
from control.core.db import Database
from control.web import create_app


@pytest.fixture
def app(config: Config, db: Database) -> Flask:
    return create_app(config, db, TESTING=True)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def browser(client: FlaskClient) -> Browser:
    return Browser(client)


@pytest.fixture
def admin_user(uow) -> str:
    with uow() as ctx:
        return accounts.create_user(ctx, username="root", password=ADMIN_PW, role="admin").id


@pytest.fixture
def viewer_user(uow) -> str:
    with uow() as ctx:
        return accounts.create_user(ctx, username="watcher", password=VIEWER_PW,
                                    role="viewer").id


@pytest.fixture
def admin(app: Flask, admin_user: str) -> Browser:
    b = Browser(app.test_client())
    resp = sign_in(b, "root", ADMIN_PW)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return b


@pytest.fixture
def viewer(app: Flask, viewer_user: str) -> Browser:
    b = Browser(app.test_client())
    assert sign_in(b, "watcher", VIEWER_PW).status_code == 302
    return b


@pytest.fixture
def make_token(uow) -> Callable[[str, str], str]:
    def _make(user_id: str, scope: str = "write") -> str:
        with uow() as ctx:
            _, raw = admin_tokens.create_token(ctx, user_id, scope=scope, name="test")
        return raw

    return _make


@pytest.fixture
def write_token(make_token, admin_user: str) -> str:
    return make_token(admin_user, "write")


@pytest.fixture
def read_token(make_token, admin_user: str) -> str:
    return make_token(admin_user, "read")


@pytest.fixture
def api(client: FlaskClient, write_token: str) -> Callable[..., Any]:
    """``api("GET", "/accounts", json=…, headers=…)`` with the write token."""

    def _call(method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or write_token}", **kw.pop("headers", {})}
        return client.open("/api/v1" + path, method=method, headers=headers, **kw)

    return _call


@pytest.fixture
def holder(app: Flask, uow) -> Iterator[tuple[Browser, str]]:
    """A signed-in account holder (portal) and their account id."""
    with uow() as ctx:
        account = accounts.create_account(ctx, name="Grace Hopper", email="grace@example.com",
                                          adult_attested=True, password=HOLDER_PW)
        account_id = account.id
    b = Browser(app.test_client())
    resp = b.post("/portal/login", {"email": "grace@example.com", "password": HOLDER_PW})
    assert resp.status_code == 302
    yield b, account_id

"""Fixtures for the self-hosting tests: a configuration that delivers to a real SMTP server."""

from __future__ import annotations

import pytest
from selfhost_helpers import SECRET_KEY, WEBHOOK_SECRET, reconfigured
from stripe_double import StripeDouble

from control.core.config import Config
from control.web import create_app


@pytest.fixture
def mail(config: Config, smtp_server):
    """(config that delivers to the test SMTP server, its inbox)."""
    inbox, port = smtp_server
    return reconfigured(config, smtp={"host": "127.0.0.1", "port": port}), inbox


@pytest.fixture
def stripe_api(config, db, monkeypatch):
    """(payments-enabled config, the double wired to the real app's webhook)."""
    monkeypatch.setenv("HUSHGATE_STRIPE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("HUSHGATE_PAYMENT_WEBHOOK_SECRET", WEBHOOK_SECRET)
    client = create_app(config, db, TESTING=True).test_client()

    def deliver(body: bytes, headers: dict[str, str]) -> int:
        return client.post("/webhooks/payments", data=body, headers=headers).status_code

    with StripeDouble(SECRET_KEY, WEBHOOK_SECRET, deliver) as double:
        yield reconfigured(config, payments={"provider": "stripe",
                                             "api_base": double.api_base}), double

"""Fixtures for the self-hosting tests: a configuration that delivers to a real SMTP server."""

from __future__ import annotations

import pytest
from selfhost_helpers import reconfigured

from control.core.config import Config


@pytest.fixture
def mail(config: Config, smtp_server):
    """(config that delivers to the test SMTP server, its inbox)."""
    inbox, port = smtp_server
    return reconfigured(config, smtp={"host": "127.0.0.1", "port": port}), inbox

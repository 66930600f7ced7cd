"""Fixtures for the self-hosting tests: a configuration that delivers to a real SMTP server."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from control.core.config import Config, load_config


def reconfigured(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of the test configuration with some keys of some sections replaced."""
    raw = copy.deepcopy(config.raw)
    for name, values in sections.items():
        raw[name].update(values)
    return load_config(overrides=raw)


@pytest.fixture
def mail(config: Config, smtp_server):
    """(config that delivers to the test SMTP server, its inbox)."""
    inbox, port = smtp_server
    return reconfigured(config, smtp={"host": "127.0.0.1", "port": port}), inbox

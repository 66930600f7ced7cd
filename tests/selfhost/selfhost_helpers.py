"""Helpers shared by the self-hosting tests (importable as ``selfhost_helpers``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from control.core.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
# the Stripe double's keys (tests/stripe_double.py)
SECRET_KEY = "sk_test_hushgate_double_0123456789"
WEBHOOK_SECRET = "whsec_test_hushgate_double"


def reconfigured(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of the test configuration with some keys of some sections replaced."""
    raw = copy.deepcopy(config.raw)
    for name, values in sections.items():
        raw[name].update(values)
    return load_config(overrides=raw)

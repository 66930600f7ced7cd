"""Helpers shared by the self-hosting tests (importable as ``selfhost_helpers``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from control.core.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]


def reconfigured(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of the test configuration with some keys of some sections replaced."""
    raw = copy.deepcopy(config.raw)
    for name, values in sections.items():
        raw[name].update(values)
    return load_config(overrides=raw)

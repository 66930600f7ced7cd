"""What the format modules share: the per-request context and id helpers."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from control.simulator.text import Plan


def new_id(prefix: str) -> str:
    """A provider-looking random id, e.g. ``chatcmpl-3f9a...``."""
    return f"{prefix}{secrets.token_hex(12)}"


def now() -> int:
    """Unix time in seconds."""
    return int(time.time())


@dataclass(frozen=True)
class Ctx:
    """One generation request, as the format builders see it."""

    body: dict[str, Any]
    plan: Plan
    stream: bool
    usage: bool  # False under the ``no_usage`` fault
    embedding_dim: int = 8

    @property
    def model(self) -> str:
        """The model named in the request (echoed back like providers do)."""
        model = self.body.get("model")
        return model if isinstance(model, str) else "unknown"

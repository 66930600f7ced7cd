"""The privacy-lifecycle services (export, erasure, retention, policy, notifications).

They live in ``control.core`` modules built alongside the control plane; pages call them
through here so a missing module shows as "not available" instead of breaking the app.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any


def service(name: str) -> ModuleType | None:
    """``control.core.<name>`` if it is installed, else None."""
    full = f"control.core.{name}"
    try:
        if importlib.util.find_spec(full) is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module(full)


class Unavailable(Exception):
    """A lifecycle service this deployment doesn't have yet."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the {name} service is not available in this build")
        self.name = name


def require(name: str) -> ModuleType:
    mod = service(name)
    if mod is None:
        raise Unavailable(name)
    return mod


def notify(ctx: Any, account_id: str, kind: str, **params: Any) -> None:
    """Queue a message to the account holder in the caller's transaction (if the
    notification service is installed; it honours the holder's opt-out itself)."""
    mod = service("notify")
    if mod is not None:
        mod.send(ctx.session, ctx.config, account_id, kind, **params)

"""`hushgate retention|export|policy …` — the privacy lifecycle (see control.core.lifecycle)."""

from __future__ import annotations

COMMANDS: list = []

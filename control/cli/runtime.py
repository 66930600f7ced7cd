"""`hushgate proxy|serve|up|simulator` — the long-running processes."""

from __future__ import annotations

COMMANDS: list = []

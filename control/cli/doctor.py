"""`hushgate doctor` (checks a config and a running deployment). Placeholder: filled in by
the self-hosting work (#12)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []

"""Fault names and how one is chosen for a request.

A fault is selected, first match wins, by the ``x-sim-fault`` request header, by a
``SIM_FAULT:<name>`` marker in the prompt (see :mod:`control.simulator.text`), or by the
server-wide fault set with ``Simulator.set_fault``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

STATUS_500 = "status_500"
STATUS_429 = "status_429"
STATUS_400 = "status_400"
TIMEOUT = "timeout"
CUT_MIDSTREAM = "cut_midstream"
NO_USAGE = "no_usage"
SLOW_STREAM = "slow_stream"
GARBAGE = "garbage"
CLOSE_IMMEDIATELY = "close_immediately"
ERROR_MIDSTREAM = "error_midstream"

#: Every named fault. ``status_<code>`` works for any code 400-599 as well.
FAULTS: frozenset[str] = frozenset({
    STATUS_500, STATUS_429, STATUS_400, TIMEOUT, CUT_MIDSTREAM, NO_USAGE, SLOW_STREAM,
    GARBAGE, CLOSE_IMMEDIATELY, ERROR_MIDSTREAM,
})

#: Other spellings accepted for the same faults.
ALIASES: dict[str, str] = {
    "server_error": STATUS_500,
    "rate_limit": STATUS_429,
    "bad_request": STATUS_400,
    "overloaded": "status_529",
    "hang": TIMEOUT,
    "cut": CUT_MIDSTREAM,
    "slow": SLOW_STREAM,
    "close": CLOSE_IMMEDIATELY,
}

_STATUS_RE = re.compile(r"^status_([45]\d\d)$")
FAULT_HEADER = "x-sim-fault"


class UnknownFault(ValueError):
    """A fault name that the simulator does not know."""


def normalize(name: str) -> str:
    """The canonical name of a fault (aliases resolved, case-insensitive).

    Raises :class:`UnknownFault` for an unknown name.
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in FAULTS or _STATUS_RE.match(key):
        return key
    raise UnknownFault(
        f"unknown simulator fault {name!r}; known: {', '.join(sorted(FAULTS))}, "
        f"status_<400-599>, aliases {', '.join(sorted(ALIASES))}")


def status_of(fault: str | None) -> int | None:
    """The HTTP status of a ``status_<code>`` fault, else ``None``."""
    match = _STATUS_RE.match(fault or "")
    return int(match.group(1)) if match else None


@dataclass
class _Armed:
    name: str
    remaining: int | None


class FaultSwitch:
    """The server-wide fault: thread-safe, optionally limited to the next ``times``
    requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: _Armed | None = None

    def set(self, name: str, times: int | None = None) -> None:
        """Apply ``name`` to every following request (or to the next ``times`` ones)."""
        armed = _Armed(normalize(name), times)
        with self._lock:
            self._armed = armed if times is None or times > 0 else None

    def clear(self) -> None:
        """Stop applying the server-wide fault."""
        with self._lock:
            self._armed = None

    @property
    def current(self) -> str | None:
        """The server-wide fault now in force, if any."""
        with self._lock:
            return self._armed.name if self._armed else None

    def take(self) -> str | None:
        """The server-wide fault for one request (counts down a limited fault)."""
        with self._lock:
            armed = self._armed
            if armed is None:
                return None
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining <= 0:
                    self._armed = None
            return armed.name


def select(header: str | None, marker: str | None, switch: FaultSwitch) -> str | None:
    """The fault for one request: header, then prompt marker, then server-wide.

    Raises :class:`UnknownFault` when the header or marker names no fault.
    """
    if header:
        return normalize(header)
    if marker:
        return normalize(marker)
    return switch.take()

"""The audit head file: an append-only record of the chain head kept outside the database.

The HMAC chain proves that no event was edited, removed from the middle or reordered, and
the signed checkpoint covers what the retention purge removed. What the chain cannot prove
on its own is that the *newest* events are all there: someone who can bypass the database
triggers could delete the last events and rewind ``audit_state`` to the new end. So every
verify, purge and ``hushgate audit head`` appends the head (sequence number = event count,
and hash) to this file, and ``verify`` refuses a chain that is shorter than, or differs from,
the highest head ever written.

Each line is JSON with an HMAC over its content and the previous line's HMAC, so a database
editor (who has no file access) can't forge it, and an edited line is detected. Deleting the
file's last lines is not detectable from the file alone: copy ``hushgate audit head`` output
somewhere else (a ticket, a log service, an ``chattr +a`` file) to anchor it externally.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.core.base import utcnow
from control.core.models import AuditState

GENESIS_MAC = "0" * 64


class HeadFileError(Exception):
    """The head file is unreadable or was altered. The message is safe to show."""


@dataclass(frozen=True)
class HeadEntry:
    """One anchored chain head: ``seq`` events have been appended, the last with ``hash``."""

    seq: int
    hash: str
    at: str
    prev: str
    mac: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _mac(key: bytes, seq: int, chain_hash: str, at: str, prev: str) -> str:
    msg = f"hushgate-audit-head|{seq}|{chain_hash}|{at}|{prev}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def _parse(line: str, lineno: int, key: bytes, prev: str) -> HeadEntry:
    try:
        data = json.loads(line)
        entry = HeadEntry(seq=int(data["seq"]), hash=str(data["hash"]), at=str(data["at"]),
                          prev=str(data["prev"]), mac=str(data["mac"]))
    except (ValueError, KeyError, TypeError):
        raise HeadFileError(f"head file line {lineno} is malformed") from None
    if entry.prev != prev:
        raise HeadFileError(f"head file line {lineno} does not follow line {lineno - 1}")
    if not hmac.compare_digest(_mac(key, entry.seq, entry.hash, entry.at, entry.prev),
                               entry.mac):
        raise HeadFileError(f"head file line {lineno} was modified")
    return entry


def read_entries(path: Path, key: bytes) -> list[HeadEntry]:
    """Every entry, checked: MACs, line chaining, and a head that never moves backwards."""
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except OSError as exc:
        raise HeadFileError(f"cannot read the head file: {exc.strerror}") from None
    entries: list[HeadEntry] = []
    prev = GENESIS_MAC
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        entry = _parse(line, lineno, key, prev)
        if entries and entry.seq < entries[-1].seq:
            raise HeadFileError(f"head file line {lineno} moves the head backwards")
        if entries and entry.seq == entries[-1].seq and entry.hash != entries[-1].hash:
            raise HeadFileError(f"head file line {lineno} gives event {entry.seq} another hash")
        entries.append(entry)
        prev = entry.mac
    return entries


def last_entry(path: Path, key: bytes) -> HeadEntry | None:
    """The highest head ever anchored (the last line), or None if nothing was anchored."""
    entries = read_entries(path, key)
    return entries[-1] if entries else None


def database_head(session: Session) -> tuple[int, str]:
    """The chain head the database claims: (event count, hash of the last event)."""
    row = session.execute(select(AuditState.last_seq, AuditState.last_hash)
                          .where(AuditState.id == 1)).one()
    return int(row.last_seq), str(row.last_hash)


def append_head(path: Path, key: bytes, seq: int, chain_hash: str,
                at: datetime | None = None) -> HeadEntry:
    """Append a head under an exclusive lock. Refuses a head that moves backwards or forks
    (that would launder a truncated chain); an unchanged head is not written again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            entries = read_entries(path, key)
            last = entries[-1] if entries else None
            if last is not None:
                if seq < last.seq:
                    raise HeadFileError(f"the chain head {seq} is behind the anchored head "
                                        f"{last.seq}: the newest events were removed")
                if seq == last.seq:
                    if chain_hash != last.hash:
                        raise HeadFileError(f"event {seq} differs from the anchored head")
                    return last
            prev = last.mac if last else GENESIS_MAC
            stamp = (at or utcnow()).isoformat(timespec="seconds")
            entry = HeadEntry(seq=seq, hash=chain_hash, at=stamp, prev=prev,
                              mac=_mac(key, seq, chain_hash, stamp, prev))
            fh.write(json.dumps(entry.as_dict(), sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            return entry
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def anchor(session: Session, path: Path, key: bytes) -> HeadEntry:
    """Append the database's current head to the head file."""
    seq, chain_hash = database_head(session)
    return append_head(path, key, seq, chain_hash)

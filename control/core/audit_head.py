"""The audit head file: an append-only record of the chain head kept outside the database.

The HMAC chain proves that no event was edited, removed from the middle or reordered, and
the signed checkpoint covers what the retention purge removed. What the chain cannot prove
on its own is that the *newest* events are all there: someone who can bypass the database
triggers could delete the last events and rewind ``audit_state`` to the new end. So every
verify, purge and ``hushgate audit head`` appends the head (sequence number = event count,
and hash) to this file, and ``verify`` refuses a chain that is shorter than, or differs from,
the highest head ever written.

Each line is JSON with an HMAC over its content and the previous line's HMAC, so a database
editor (who has no file access) can't forge it, and an edited line is detected. The database
appends the new head after every commit that recorded events (``Database``), and each append
writes the file's last head into the *signed* audit state, so a removed, emptied or cut-back
head file is detected by verify too. What no local file can prove is that someone with both
database and file access didn't reset everything to an older consistent point: the external
anchors (``control.core.anchors``) push the same signed lines off the machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.core.base import utcnow
from control.core.models import AuditState

GENESIS_MAC = "0" * 64
#: ``Session.info`` keys: where this database's head file is, and "events were recorded".
SESSION_PATH = "hushgate_audit_head_path"
SESSION_PENDING = "hushgate_audit_head_pending"
TAIL_BYTES = 4096

log = logging.getLogger("hushgate.audit")


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
    """Append the database's current head to the head file (the file only: prefer
    ``control.core.audit.anchor``, which also records it in the signed state)."""
    seq, chain_hash = database_head(session)
    return append_head(path, key, seq, chain_hash)


def _tail(fh: object, key: bytes) -> HeadEntry | None:
    """The last line of an open head file, its MAC checked (not its link to the line before).
    Raises HeadFileError when that line is malformed or forged."""
    fd = fh.fileno()  # type: ignore[attr-defined]
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - TAIL_BYTES)
    chunk = os.pread(fd, size - start, start).decode("utf-8", "replace")
    lines = [ln for ln in chunk.splitlines() if ln.strip()]
    if not lines or (start and len(lines) < 2):
        raise HeadFileError("the head file's last line is malformed")
    try:
        data = json.loads(lines[-1])
        entry = HeadEntry(seq=int(data["seq"]), hash=str(data["hash"]), at=str(data["at"]),
                          prev=str(data["prev"]), mac=str(data["mac"]))
    except (ValueError, KeyError, TypeError):
        raise HeadFileError("the head file's last line is malformed") from None
    if not hmac.compare_digest(_mac(key, entry.seq, entry.hash, entry.at, entry.prev),
                               entry.mac):
        raise HeadFileError("the head file's last line was modified")
    return entry


def tail_seq(path: Path, key: bytes) -> int | None:
    """The seq of the head file's last (MAC-checked) line, or None: cheap, for every append."""
    try:
        with path.open("rb") as fh:
            entry = _tail(fh, key)
    except (OSError, HeadFileError):
        return None
    return entry.seq if entry else None


def append_committed(path: Path, key: bytes, seq: int, chain_hash: str) -> None:
    """After a commit that recorded events: append its head unless a later one is already
    there (concurrent commits finish in any order). Never raises: the commit stands, and a
    head file that can't be written is reported by verify."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            last = _tail(fh, key)
            if last is not None and seq <= last.seq:
                if seq == last.seq and chain_hash != last.hash:
                    log.error("audit head %d differs from the head file's", seq)
                return
            prev = last.mac if last else GENESIS_MAC
            stamp = utcnow().isoformat(timespec="seconds")
            entry = HeadEntry(seq=seq, hash=chain_hash, at=stamp, prev=prev,
                              mac=_mac(key, seq, chain_hash, stamp, prev))
            fh.write((json.dumps(entry.as_dict(), sort_keys=True) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
    except (OSError, HeadFileError) as exc:
        log.error("audit head %d not written to the head file: %s", seq,
                  getattr(exc, "strerror", None) or exc)


def parse_line(line: str, key: bytes) -> HeadEntry | None:
    """A signed head found anywhere in ``line`` (a head-file line, or a syslog / log-service
    line carrying one), or None if there is none or its MAC is wrong."""
    idx = line.find("{")
    if idx < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(line[idx:])
        entry = HeadEntry(seq=int(data["seq"]), hash=str(data["hash"]), at=str(data["at"]),
                          prev=str(data["prev"]), mac=str(data["mac"]))
    except (ValueError, KeyError, TypeError):
        return None
    if not hmac.compare_digest(_mac(key, entry.seq, entry.hash, entry.at, entry.prev),
                               entry.mac):
        return None
    return entry


def read_anchors(path: Path, key: bytes) -> list[HeadEntry]:
    """Every correctly signed head in a file collected from an external sink (syslog lines,
    a log-service export, head-file lines). Lines without a valid head are skipped: they
    can't be forged without the key, only lost."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise HeadFileError(f"cannot read the anchors file {path}: {exc.strerror}") from None
    return [e for e in (parse_line(ln, key) for ln in text.splitlines()) if e is not None]

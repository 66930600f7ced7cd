"""Private files: what hushgate creates is readable by its own user only.

The data folder is 0700; databases (and SQLite's WAL, shared-memory and journal files), the
audit head file, the JSON-lines sink and every secret are 0600. The command line sets a 0o077
umask before it creates anything (``control.cli.main``), so even files a library creates
(SQLite's ``-wal``/``-shm``, the proxy's JSON-lines sink) are private; these helpers make the
same true for code run without the CLI (tests, an embedding WSGI server) and repair what an
older version or a careless copy left world-readable, with a warning.

A *secret* file (the audit key, the session secret) that group or others can read is refused
rather than repaired: it may already have been read, so the operator must decide.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from control.core.errors import ConfigError

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")

log = logging.getLogger("hushgate.files")


def set_private_umask() -> int:
    """Make every file this process creates from now on private; returns the old umask."""
    return os.umask(PRIVATE_UMASK)


def _tighten(path: Path, mode: int) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    current = stat.S_IMODE(st.st_mode)
    if current & 0o077:
        try:
            os.chmod(path, current & ~0o077 & 0o7777 | (mode & 0o700))
        except OSError as exc:
            log.warning("hushgate: %s is readable by others (mode %o) and could not be "
                        "tightened: %s", path, current, exc.strerror)
            return
        log.warning("hushgate: %s was readable by others (mode %o); tightened to %o",
                    path, current, stat.S_IMODE(path.stat().st_mode))


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700, or tighten an existing one."""
    if not path.exists():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Tighten an existing file to 0600 (with a warning) or create it empty as 0600."""
    if path.exists():
        _tighten(path, FILE_MODE)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
        os.close(fd)
    return path


def private_database(path: Path) -> None:
    """A SQLite database file and its sidecar files: 0600 (SQLite gives ``-wal``/``-shm``
    the database file's own mode, so the main file must be private before they exist)."""
    private_dir(path.parent)
    private_file(path)
    for suffix in SQLITE_SIDECARS:
        _tighten(path.with_name(path.name + suffix), FILE_MODE)


def check_secret_file(path: Path) -> None:
    """Refuse a secret file that group or others may read (or write)."""
    try:
        st = path.stat()
    except OSError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(f"secret file {path} is accessible by group or others (mode "
                          f"{mode:o}): run `chmod 600 {path}` and make sure nobody else "
                          "has read it")

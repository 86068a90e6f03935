"""Files in the data directory are private to their owner: the journal is a trade history.

Everything the supervisor writes there is created 0600 (directories 0700): the journal (SQLite
gives its -wal and -shm files the journal's own mode), its lock file, the alert log, the paper
broker's state, the IB groups file and the screen's logs. A file that already exists with wider
permissions is tightened when the engine starts (`tighten_all`); `check-config` warns about it
beforehand (`loose`). Only the supervisor's own file names are touched, so a data_dir that is
also some other directory keeps its other files as they are.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o600
DIR_MODE = 0o700

# The supervisor's own files in data_dir (the journal's name is engine.store.JOURNAL_FILENAME).
OWN_FILES = (
    "trades.db",
    "trades.db-wal",
    "trades.db-shm",
    "trades.db-journal",
    "trades.db.lock",
    "alerts.jsonl",
    "paper_venue.json",
    "ibkr_groups.json",
    "trade-supervisor.log",
    "engine.log",
)


def make_dir(path: Path) -> None:
    """Create `path` (and its missing parents) as 0700; an existing directory is left as is."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)


def create(path: Path) -> None:
    """Create an empty file, 0600, unless it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)


def open_append(path: Path, binary: bool = False, **kwargs: Any) -> IO[Any]:
    """`open(path, "a")` that creates the file 0600 (an existing file is tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        _tighten_fd(fd)
        return os.fdopen(fd, "ab" if binary else "a", **kwargs)
    except BaseException:
        os.close(fd)
        raise


def tighten(path: Path) -> bool:
    """Make an existing regular file 0600 if group or others may read or write it; True if it
    was changed. A missing file, or one owned by another user, is left alone."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o077 or st.st_uid != os.getuid():
        return False
    try:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
    except OSError:
        return False
    return True


def loose(data_dir: Path) -> list[Path]:
    """The supervisor's files in `data_dir` that group or others may read or write."""
    out = []
    for name in OWN_FILES:
        p = data_dir / name
        try:
            st = p.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            out.append(p)
    return out


def tighten_all(data_dir: Path) -> list[Path]:
    """Tighten every file `loose` names; returns the ones that were changed."""
    return [p for p in loose(data_dir) if tighten(p)]


def _tighten_fd(fd: int) -> None:
    st = os.fstat(fd)
    if st.st_mode & 0o077 and st.st_uid == os.getuid():
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o077)

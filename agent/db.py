"""SQLite files that several threads and processes write: conversation memory and feedback.

`connect` opens (creating when missing) a database for concurrent use: WAL journal, so readers
never block the writer and a killed process loses no committed row; a busy timeout, so writers
from other threads and server workers wait for the lock instead of failing; one connection
shared by the threads of a process (callers serialise their own statements, as LangGraph's
`SqliteSaver` does with its lock). It also checks the file first: a damaged database (random
bytes, a truncated copy) raises `DamagedDatabaseError` naming the file, instead of a
`sqlite3.DatabaseError` traceback on the first question. `move_aside` keeps such a file (and its
`-wal`/`-shm` companions) under a new name so that a fresh one can start.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from retrieval.errors import CasewiseError, UsageError

# Seconds a writer waits for another writer's lock before giving up. Generous: a server
# worker should queue behind a slow commit, not fail the request.
BUSY_TIMEOUT_S = 30.0


class DamagedDatabaseError(UsageError):
    """A SQLite file that is not a healthy database (exit 2: the user must move or reset it)."""

    def __init__(self, path: Path, what: str, reason: str, fix: str) -> None:
        super().__init__(f"{what} {path} is damaged ({reason}): {fix}")
        self.path = path


def connect(path: Path, *, what: str, fix: str) -> sqlite3.Connection:
    """Open the SQLite database at `path` for concurrent writers, after checking it is healthy.

    Args:
        path: The database file; it and its directory are created when missing.
        what: What the file holds, for messages ("conversation memory").
        fix: What the user can do about a damaged file (ends the error message).

    Returns:
        A connection usable from any thread (serialise statements yourself), in WAL mode.

    Raises:
        DamagedDatabaseError: The file is not a database or fails SQLite's quick check.
        CasewiseError: The file cannot be opened (permissions, a directory, locked for longer
            than `BUSY_TIMEOUT_S`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    except sqlite3.Error as e:
        raise CasewiseError(f"cannot open {what} {path}: {e}") from e
    try:
        # quick_check reads every page once (milliseconds for a memory file): damage shows
        # here, not in the middle of a conversation.
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as e:  # locked, unreadable: not damage
        conn.close()
        raise CasewiseError(f"cannot open {what} {path}: {e}") from e
    except sqlite3.DatabaseError as e:  # "file is not a database", "disk image is malformed"
        conn.close()
        raise DamagedDatabaseError(path, what, str(e), fix) from e
    if problems != ["ok"]:
        conn.close()
        raise DamagedDatabaseError(path, what, "; ".join(problems[:3]), fix)
    return conn


def move_aside(path: Path) -> Path | None:
    """Rename the database at `path` (and its `-wal`/`-shm` files) to `<name>.<time>.bak`.

    The companions keep their suffixes next to the new name, so a healthy database moved aside
    still opens with every committed row.

    Returns:
        The new path of the database, or `None` when there was no file at `path`.
    """
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = path.with_name(f"{path.name}.{stamp}.bak")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.{stamp}-{n}.bak")
    path.rename(kept)
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.rename(kept.with_name(kept.name + suffix))
    return kept

"""StateError and what each SQLite, PostgreSQL or MariaDB failure means to an operator: what
went wrong, what to do."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

__all__ = ["BUSY_TIMEOUT", "StateError", "explain"]

BUSY_TIMEOUT = timedelta(seconds=5)
"""How long a statement waits for another process's lock before failing."""


class StateError(Exception):
    """The store cannot be used; the message names the file or the database (never a
    password) and what to do."""


_FIXES: dict[int, str] = {
    sqlite3.SQLITE_NOTADB: (
        "It is not a refreshd state database, or it is damaged: stop refreshd and restore "
        "it from a backup, or move it aside to start with empty state (suspensions and "
        "done runs are forgotten)."
    ),
    sqlite3.SQLITE_FULL: "The disk is full: free space on the file system that holds it.",
    sqlite3.SQLITE_READONLY: (
        "It is read-only: give the daemon's user write access to the file and its "
        "directory (and their -wal and -shm files)."
    ),
    sqlite3.SQLITE_CANTOPEN: (
        "It cannot be opened: check that it and its directory exist and are readable and "
        "writable by this user, or set daemon.state_path."
    ),
    sqlite3.SQLITE_IOERR: (
        "The operating system refused a read or write: check that the file system is not "
        "full and the disk is healthy (dmesg)."
    ),
    sqlite3.SQLITE_BUSY: (
        f"Another process held it locked for over {BUSY_TIMEOUT.total_seconds():g} s: is a "
        "second refreshd using the same state_path?"
    ),
}
_FIXES[sqlite3.SQLITE_CORRUPT] = _FIXES[sqlite3.SQLITE_NOTADB]
_FIXES[sqlite3.SQLITE_PERM] = _FIXES[sqlite3.SQLITE_READONLY]
_FIXES[sqlite3.SQLITE_LOCKED] = _FIXES[sqlite3.SQLITE_BUSY]
_GENERIC_FIX = (
    "If it persists, stop refreshd and move the file aside to start with empty state "
    "(suspensions and done runs are forgotten)."
)


def explain(path: Path, doing: str, err: sqlite3.Error) -> str:
    """The operator's message for `err`, raised while the store tried `doing` on `path`."""
    if path.is_dir():
        # SQLite calls this a disk I/O error (read-only) or "unable to open" (read-write):
        # either sends the operator to the disk, and the disk is fine.
        return (
            f"state file {path}: cannot {doing}: it is a directory, not a file. Set "
            f"daemon.state_path to a file in it (e.g. {path / 'state.db'})."
        )
    # Extended codes (SQLITE_IOERR_WRITE, ...) carry the primary code in the low byte.
    code = getattr(err, "sqlite_errorcode", None)
    fix = _GENERIC_FIX if code is None else _FIXES.get(code & 0xFF, _GENERIC_FIX)
    return f"state file {path}: cannot {doing}: {err}. {fix}"


def explain_server(where: str, doing: str, err: BaseException, *, connection: bool) -> str:
    """The operator's message for a PostgreSQL or MariaDB failure: `connection` when the
    database could not be reached or the connection broke (it is tried again at the next
    write). Never a password: the URL holds none, and the drivers' messages neither."""
    reason = " ".join(str(err).split()).rstrip(".") or type(err).__name__
    if connection:
        fix = (
            "Check that the database server runs and answers from this host, and the [state] "
            "url, user and password_env/password_file; refreshd connects again at its next "
            "write, no restart needed."
        )
    elif _denied(reason):
        fix = (
            "Grant the [state] url's user CREATE, SELECT, INSERT, UPDATE and DELETE on that "
            "database (the first start creates the tables)."
        )
    else:
        fix = "If it persists, check the database server's log."
    return f"{where}: cannot {doing}: {reason}. {fix}"


def _denied(reason: str) -> bool:
    lowered = reason.lower()
    return "permission denied" in lowered or "command denied" in lowered

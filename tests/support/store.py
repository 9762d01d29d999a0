"""A state file read directly with sqlite3, behind refreshd's back."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def query(path: Path, sql: str, *, read_only: bool = False) -> list[tuple[Any, ...]]:
    """Every row `sql` gives on the file, on a connection of its own, closed after."""
    where = f"{path.resolve().as_uri()}?mode=ro" if read_only else str(path)
    conn = sqlite3.connect(where, uri=read_only)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def integrity(path: Path) -> str:
    """SQLite's own verdict on the file: "ok", or what is damaged."""
    return str(query(path, "PRAGMA integrity_check")[0][0])


def checkpoint(path: Path) -> None:
    """Move everything in the write-ahead log into the main file and empty the log."""
    query(path, "PRAGMA wal_checkpoint(TRUNCATE)")

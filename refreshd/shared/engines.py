"""The three engines behind one small interface: a transaction, statements written once with
%s placeholders, and the database's own clock (leases are measured by it, so two hosts whose
clocks disagree still agree on whether a lease has run out). Drivers are imported on first use:
a daemon on SQLite never pays for psycopg or PyMySQL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from refreshd.clock import Clock
from refreshd.dburl import DatabaseUrl


class Tx(Protocol):
    """One open transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    def fetchone(self) -> tuple[Any, ...] | None: ...

    def fetchall(self) -> list[tuple[Any, ...]]: ...


class Engine:
    """One connection to one database, one transaction at a time (a lock), opened again
    after an error. `kind`: "sqlite", "postgresql" or "mysql"."""

    kind = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """Commit on leaving, roll back on an exception (and drop the connection when the
        driver failed: the next transaction connects again)."""
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            tx = _DriverTx(self._conn.cursor(), self._placeholder)
            try:
                self._begin(tx)
                yield tx
                self._conn.commit()
            except BaseException as error:
                self._abandon(error)
                raise

    def now_ms(self, tx: Tx) -> int:
        """The database's clock, in milliseconds since the epoch."""
        tx.execute(self._now_sql)
        row = tx.fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- what each engine says differently -------------------------------------------------

    _placeholder = "%s"
    _now_sql = ""

    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin(self, tx: Tx) -> None:
        """Drivers open a transaction implicitly with the first statement."""

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        """INSERT that does nothing (changes 0 rows) when the primary key exists; it waits
        for a transaction inserting the same key, so the race has exactly one winner."""
        marks = ", ".join(["%s"] * len(columns))
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT DO NOTHING"

    def for_update(self) -> str:
        """What makes a SELECT lock the rows it reads until the transaction ends."""
        return " FOR UPDATE"

    def _abandon(self, error: BaseException) -> None:
        try:
            self._conn.rollback()
        except Exception:  # the connection is broken: a new one next time
            self._drop()
            return
        if self._is_driver_error(error):
            self._drop()

    def _is_driver_error(self, error: BaseException) -> bool:
        return False

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken; nothing more to release
                return


class _DriverTx:
    def __init__(self, cursor: Any, placeholder: str) -> None:
        self._cursor = cursor
        self._placeholder = placeholder

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self._placeholder != "%s":
            sql = sql.replace("%s", self._placeholder)
        self._cursor.execute(sql, tuple(params))
        return int(self._cursor.rowcount)

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._cursor.fetchall()]


class _Sqlite(Engine):
    kind = "sqlite"
    _placeholder = "?"

    def __init__(self, path: Path, clock: Clock) -> None:
        super().__init__()
        self._path = path
        self._clock = clock

    def _connect(self) -> Any:
        conn = sqlite3.connect(
            self._path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def _begin(self, tx: Tx) -> None:
        # IMMEDIATE: the write lock at once, so two claimers never both read "free".
        tx.execute("BEGIN IMMEDIATE")

    def now_ms(self, tx: Tx) -> int:
        # One host: its own clock is the database's.
        return int(self._clock.now().timestamp() * 1000)

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        marks = ", ".join(["%s"] * len(columns))
        return f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})"

    def for_update(self) -> str:
        return ""  # BEGIN IMMEDIATE already holds the whole file

    def _is_driver_error(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.Error)


class _Postgresql(Engine):
    kind = "postgresql"
    _now_sql = "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint"

    def __init__(self, url: DatabaseUrl, password: str | None, timeout: float) -> None:
        super().__init__()
        self._url, self._password, self._timeout = url, password, timeout

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(
            host=self._url.host,
            port=self._url.port,
            user=self._url.user,
            password=self._password or None,
            dbname=self._url.database,
            connect_timeout=max(1, round(self._timeout)),
        )

    def _is_driver_error(self, error: BaseException) -> bool:
        import psycopg

        return isinstance(error, psycopg.OperationalError)


class _Mysql(Engine):
    kind = "mysql"
    _now_sql = "SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"

    def __init__(self, url: DatabaseUrl, password: str | None, timeout: float) -> None:
        super().__init__()
        self._url, self._password, self._timeout = url, password, timeout

    def _connect(self) -> Any:
        import pymysql

        return pymysql.connect(
            host=self._url.host,
            port=self._url.port,
            user=self._url.user,
            password=self._password or "",
            database=self._url.database,
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
            write_timeout=self._timeout,
            autocommit=False,
            charset="utf8mb4",
        )

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        # Not INSERT IGNORE: that would also turn other errors (a too-long value) into
        # warnings. Setting the key to itself changes 0 rows.
        marks = ", ".join(["%s"] * len(columns))
        first = columns[0]
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
            f"ON DUPLICATE KEY UPDATE {first} = {first}"
        )

    def _is_driver_error(self, error: BaseException) -> bool:
        import pymysql

        return isinstance(error, pymysql.OperationalError | pymysql.InterfaceError)


def connect(url: DatabaseUrl, password: str | None, *, timeout: float = 5.0) -> Engine:
    """An engine for a PostgreSQL or MariaDB/MySQL URL (it connects on first use)."""
    if url.engine == "postgresql":
        return _Postgresql(url, password, timeout)
    return _Mysql(url, password, timeout)


def sqlite_engine(path: Path, clock: Clock) -> Engine:
    """An engine for one SQLite file on this host."""
    return _Sqlite(path, clock)

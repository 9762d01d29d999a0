"""The database servers behind the Engine interface: PostgreSQL (psycopg 3) and MariaDB/MySQL
(PyMySQL), each driver imported on first use. What each says differently from the portable SQL
(upserts, column types, the schema version's table, the migration lock) is here."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from refreshd.dburl import DatabaseUrl
from refreshd.shared.engines import Engine

# A PostgreSQL transaction that has taken this many of the store's time-outs is hung (each of
# its statements waits for a lock at most two: lock_timeout): its connection is cut.
HUNG_AFTER = 3


class _Server(Engine):
    """A database server: PostgreSQL or MariaDB/MySQL."""

    def __init__(self, url: DatabaseUrl, password: str | None, timeout: float) -> None:
        super().__init__()
        self._url, self._password, self._timeout = url, password, timeout

    @property
    def url(self) -> DatabaseUrl:
        return self._url

    @property
    def where(self) -> str:
        return f"state database {self._url}"


class _Postgresql(_Server):
    kind = "postgresql"
    _now_sql = "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint"
    _table_exists_sql = (
        "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = %s"
    )
    _tables_sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"

    @property
    def _lock_sql(self) -> tuple[str, str]:  # type: ignore[override]
        # A session lock on a fixed number ("refresh" on a phone keypad). The connection's
        # lock_timeout applies to it too: it waits 60 s, as MariaDB's GET_LOCK does (the
        # setting made before the lock is asked: the CTE's row comes first), then the
        # connection's own again.
        return (
            "WITH s AS MATERIALIZED (SELECT set_config('lock_timeout', '60s', false)) "
            "SELECT pg_advisory_lock(7337374) FROM s",
            "SELECT pg_advisory_unlock(7337374), "
            f"set_config('lock_timeout', '{self._lock_timeout_ms}', false)",
        )

    @property
    def _lock_timeout_ms(self) -> int:
        return max(1, round(self._timeout * 2000))

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(
            host=self._url.host,
            port=self._url.port,
            user=self._url.user,
            password=self._password or None,
            dbname=self._url.database,
            connect_timeout=max(1, round(self._timeout)),
            application_name="refreshd",
            # A peer gone without a word (a cut network) is noticed, not waited on forever.
            keepalives=1,
            keepalives_idle=max(1, round(self._timeout)),
            keepalives_interval=1,
            keepalives_count=3,
            # Another client's lock (a DBA's open transaction, a backup) fails a statement
            # after two time-outs, rather than holding the engine (and every claim and
            # renewal behind it) until the lock goes. Two: the journal queues every
            # instance's writers on one row, a wait that must not fail under load (a
            # lock_timeout is retried by the journal, LockNotAvailable).
            options=f"-c lock_timeout={self._lock_timeout_ms}",
        )

    def _is_driver_error(self, error: BaseException) -> bool:
        import psycopg

        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)

    def _watchdog(self, conn: Any, patience: float | None) -> threading.Timer | None:
        # psycopg has no read time-out, and a peer that hangs (or a middlebox that still
        # acknowledges) passes every keepalive: without this a transaction would wait for
        # ever, holding the engine and every claim behind it, with nothing said. Cut, the
        # wait fails as a lost connection: said, retried, connected again.
        timer = threading.Timer(patience or self._timeout * HUNG_AFTER, _cut, (conn,))
        timer.daemon = True
        timer.start()
        return timer

    def retryable(self, error: BaseException) -> bool:
        from psycopg import errors

        return isinstance(
            error, errors.DeadlockDetected | errors.SerializationFailure | errors.LockNotAvailable
        )


def _cut(conn: Any) -> None:
    """Shut the connection's socket down under a blocked wait (which then fails at once)."""
    # Closed already, or closing: nothing to cut.
    with contextlib.suppress(Exception), socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


class _Mysql(_Server):
    kind = "mysql"
    _now_sql = "SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"
    types: Mapping[str, str] = {
        # InnoDB indexes a bounded prefix: keys are VARCHARs (a name fits in 255).
        "key": "VARCHAR(255)",
        "text": "TEXT",
        "real": "DOUBLE",
        "id": "BIGINT AUTO_INCREMENT PRIMARY KEY",
        "norowid": "",
        # utf8mb4_bin: names compare as SQLite and PostgreSQL compare them, case and all
        # ("East-1" is not "east-1").
        "options": " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    }
    _table_exists_sql = (
        "SELECT COUNT(*) FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_name = %s"
    )
    _tables_sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
    _lock_sql = ("SELECT GET_LOCK('refreshd_schema', 60)", "SELECT RELEASE_LOCK('refreshd_schema')")

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        import pymysql

        return (pymysql.Error,)

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

    def upsert(
        self, table: str, columns: Sequence[str], key: Sequence[str], keep: Sequence[str] = ()
    ) -> str:
        marks = ", ".join(["%s"] * len(columns))
        sets = ", ".join(
            f"{c} = COALESCE({c}, VALUES({c}))" if c in keep else f"{c} = VALUES({c})"
            for c in columns
            if c not in key
        )
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
            f"ON DUPLICATE KEY UPDATE {sets}"
        )

    def _is_driver_error(self, error: BaseException) -> bool:
        import pymysql

        return isinstance(error, pymysql.OperationalError | pymysql.InterfaceError)

    def retryable(self, error: BaseException) -> bool:
        import pymysql

        # 1213: a deadlock's victim; 1205: a lock wait timed out (rolled back here whole).
        return isinstance(error, pymysql.OperationalError) and error.args[:1] in ((1213,), (1205,))


def server_engine(url: DatabaseUrl, password: str | None, timeout: float) -> Engine:
    if url.engine == "postgresql":
        return _Postgresql(url, password, timeout)
    return _Mysql(url, password, timeout)

"""The simulated cluster's `servers` and `system_settings` tables in a real MariaDB, written
after every change of the rules' state, so refreshd's verification reads what VICIdial's
keepalive scripts would leave there."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pymysql

from refreshd.dburl import DatabaseUrl
from refreshd.simulator.rules import VERSION, SimServer

# VICIdial's own column types for the columns refreshd reads (install/MySQL_AST_CREATE_tables).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS servers (
        server_id VARCHAR(10) NOT NULL,
        server_ip VARCHAR(15) NOT NULL PRIMARY KEY,
        active ENUM('Y','N') DEFAULT 'Y',
        active_asterisk_server ENUM('Y','N') DEFAULT 'Y',
        generate_vicidial_conf ENUM('Y','N') DEFAULT 'Y',
        rebuild_conf_files ENUM('Y','N') DEFAULT 'Y'
    )""",
    "CREATE TABLE IF NOT EXISTS system_settings (version VARCHAR(50), reload_timestamp DATETIME)",
)


def _yn(value: bool) -> str:
    return "Y" if value else "N"


class SimDatabase:
    """Owns the two tables in `url`'s database (created if missing); `write` replaces their
    rows with the simulator's state in one transaction."""

    def __init__(self, url: DatabaseUrl, password: str | None = None) -> None:
        self._conn = pymysql.connect(
            host=url.host,
            port=url.port,
            user=url.user,
            password=password or "",
            database=url.database,
            autocommit=False,
            connect_timeout=5,
        )
        with self._conn.cursor() as cursor:
            for statement in _SCHEMA:
                cursor.execute(statement)
            cursor.execute("DELETE FROM system_settings")
            cursor.execute("INSERT INTO system_settings VALUES (%s, NULL)", (VERSION,))
        self._conn.commit()
        self._stamped: float | None = None  # the refresh whose stamp the row holds

    def write(
        self, servers: Sequence[SimServer], flagged: set[str], reload_timestamp: float | None
    ) -> None:
        rows: list[tuple[Any, ...]] = [
            (
                s.id,
                s.server_ip,
                _yn(s.active),
                _yn(s.active_asterisk_server),
                _yn(s.generate_vicidial_conf),
                _yn(s.server_ip in flagged),
            )
            for s in servers
        ]
        with self._conn.cursor() as cursor:
            cursor.execute("DELETE FROM servers")
            cursor.executemany("INSERT INTO servers VALUES (%s, %s, %s, %s, %s, %s)", rows)
            if reload_timestamp != self._stamped:
                # As server_refresh does: `reload_timestamp=NOW()`, the database's own clock,
                # in its zone, truncated to the second (so a test can skew it from ours).
                if reload_timestamp is None:
                    cursor.execute("UPDATE system_settings SET reload_timestamp = NULL")
                else:
                    cursor.execute("UPDATE system_settings SET reload_timestamp = NOW()")
                self._stamped = reload_timestamp
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()

"""One cluster's VICIdial database, read-only: which telephony servers still carry a refresh
flag, and when the cluster last took a refresh. Two SELECTs; never a write."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from refreshd.core.clusters import ClusterFacts
from refreshd.dburl import DatabaseUrl
from refreshd.shared.engines import connect

# The rows ADMIN_keepalive_ALL.pl acts on: any other row keeps its flag forever.
_BOXES = (
    "SELECT server_id, server_ip, rebuild_conf_files FROM servers "
    "WHERE active_asterisk_server = 'Y' AND generate_vicidial_conf = 'Y' "
    "ORDER BY server_ip"
)
# VICIdial's DATETIMEs are the database server's local time: UNIX_TIMESTAMP reads them in
# the session's zone, which is the server's own, and gives an instant.
# With the database's own clock, in the same statement: a lost call's start is compared
# with the stamp on the database's clock (core/verification.refresh_taken).
_RELOADED = (
    "SELECT UNIX_TIMESTAMP(reload_timestamp), UNIX_TIMESTAMP(NOW(6)) FROM system_settings LIMIT 1"
)
# What tells one cluster from another (core/clusters.py): every servers row, and the
# system_settings columns every VICIdial version has.
_IDENTITY = "SELECT server_id, server_ip FROM servers ORDER BY server_id, server_ip"
_SETTINGS = "SELECT version, UNIX_TIMESTAMP(reload_timestamp) FROM system_settings LIMIT 1"
GRANTS = ("SELECT ON {database}.servers", "SELECT ON {database}.system_settings")

# MariaDB/MySQL error numbers, and what each tells an operator to do.
_ACCESS_DENIED, _NO_DB_ACCESS, _UNKNOWN_DB = 1045, 1044, 1049
_TABLE_DENIED, _COLUMN_DENIED, _NO_TABLE, _BAD_COLUMN = 1142, 1143, 1146, 1054


@dataclass(frozen=True, order=True)
class Box:
    """One telephony server: `servers.server_id` and `server_ip`."""

    server_ip: str
    server_id: str


@dataclass(frozen=True)
class Reading:
    """What one look at the database saw."""

    boxes: tuple[Box, ...]  # every box that rebuilds on a refresh
    flagged: tuple[Box, ...]  # those still at rebuild_conf_files = 'Y'
    reload_timestamp: datetime | None  # system_settings.reload_timestamp, as UTC
    database_now: datetime | None = None  # the database's clock when it was read


class DatabaseProblem(Exception):
    """The database could not be read; the message says why and what to do, and never holds
    the password. `lasting`: retrying will not help until someone acts (grant, password)."""

    def __init__(self, message: str, *, lasting: bool) -> None:
        super().__init__(message)
        self.lasting = lasting


class ClusterDatabase:
    """A read-only connection to one cluster's database (an engine of refreshd/shared:
    opened on first use, opened again after a driver error, one query at a time)."""

    def __init__(self, url: DatabaseUrl, password: str | None, *, timeout: float = 5.0) -> None:
        self.url = url
        self._password = password
        self._engine = connect(url, password, timeout=timeout)

    def _rows_and_row(self, many: str, one: str) -> tuple[list[tuple[Any, ...]], Any]:
        """`many`'s rows and `one`'s row, read in one transaction ended at once (the next
        reading sees new flags); DatabaseProblem when the database cannot give them."""
        import pymysql

        try:
            with self._engine.transaction() as tx:
                tx.execute(many)
                rows = tx.fetchall()
                tx.execute(one)
                row = tx.fetchone()
        except pymysql.MySQLError as error:
            raise self._problem(error) from None
        return rows, row

    def read(self) -> Reading:
        """One reading; DatabaseProblem when the database cannot give one."""
        rows, stamp = self._rows_and_row(_BOXES, _RELOADED)
        boxes = tuple(Box(str(ip), str(sid)) for sid, ip, _ in rows)
        flagged = tuple(Box(str(ip), str(sid)) for sid, ip, flag in rows if flag == "Y")
        reloaded = _instant(stamp[0]) if stamp else None
        return Reading(boxes, flagged, reloaded, _instant(stamp[1]) if stamp else None)

    def identify(self) -> ClusterFacts:
        """What tells this cluster from another; DatabaseProblem when it cannot be read."""
        rows, settings = self._rows_and_row(_IDENTITY, _SETTINGS)
        version, stamp = settings if settings else (None, None)
        return ClusterFacts(
            (self.url.host, self.url.port, self.url.database),
            tuple((str(sid), str(ip)) for sid, ip in rows),
            None if version is None else str(version),
            _instant(stamp),
        )

    def close(self) -> None:
        self._engine.close()

    def _problem(self, error: Exception) -> DatabaseProblem:
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        url, grants = self.url, " and ".join(g.format(database=self.url.database) for g in GRANTS)
        if code == _ACCESS_DENIED:
            return DatabaseProblem(
                f"{url}: access denied for {url.user!r}: wrong password, or the user may not "
                "connect from this host; check password_env/password_file and the user's host",
                lasting=True,
            )
        if code in (_NO_DB_ACCESS, _TABLE_DENIED, _COLUMN_DENIED):
            return DatabaseProblem(
                f"{url}: {url.user!r} may not read the tables refreshd needs; "
                f"GRANT {grants} TO '{url.user}'@'...'",
                lasting=True,
            )
        if code in (_UNKNOWN_DB, _NO_TABLE, _BAD_COLUMN):
            return DatabaseProblem(
                f"{url}: no VICIdial servers/system_settings tables there; point the URL at "
                "the cluster's VICIdial database (usually 'asterisk')",
                lasting=True,
            )
        reason = error.args[1] if len(error.args) > 1 else type(error).__name__
        if self._password:
            reason = str(reason).replace(self._password, "***")
        return DatabaseProblem(f"{url}: cannot read the database ({reason})", lasting=False)


def _instant(epoch: object) -> datetime | None:
    """UNIX_TIMESTAMP's answer (a Decimal, an int, or NULL) as a UTC instant."""
    return None if epoch is None else datetime.fromtimestamp(float(str(epoch)), UTC)

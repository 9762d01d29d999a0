"""The state store: what must survive a restart, in one SQLite file.

It holds the runs that succeeded (the no-double-refresh guarantee: a slot recorded
here is never refreshed again, even after kill -9 or a power cut), each server's
last outcome and suspension, each credentials' wait, and the call history behind
`refreshd status` and `refreshd history`. It decides nothing: the policy and the
scheduler do, and tell it what to write.

Storage choices, for whoever opens the file with `sqlite3` at night:

- Times are UTC text, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, always this width, so text order
  is time order and `WHERE at >= '2026-03-01'` works by hand. The API takes and
  returns aware datetimes; naive ones are refused (ValueError), as they are a bug.
- WAL journal with `synchronous=FULL`: each commit is fsynced before `record_call`
  returns. `NORMAL` would be faster and could lose the last success on power loss,
  which is the one thing this file promises to keep.
- One connection behind a lock, shared by the daemon's worker threads: every write
  is a few rows, so serialising them costs nothing and leaves no room for
  `database is locked` between our own threads. `busy_timeout` covers other
  processes (the `status` CLI reading while the daemon writes).
- The schema version is `PRAGMA user_version`; `_MIGRATIONS[n]` takes a file from
  version n to n+1 in one transaction. Never edit a shipped migration: append one.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from refreshd.core.ledger import Ledger, LoginEntry, ServerEntry
from refreshd.core.vicidial import Outcome

__all__ = [
    "BUSY_TIMEOUT",
    "DETAIL_MAX",
    "RUNS_DONE_EXTRA_KEEP",
    "SCHEMA_VERSION",
    "CallRecord",
    "CredentialsWait",
    "NewCall",
    "ServerState",
    "StateError",
    "StateStore",
]

BUSY_TIMEOUT = timedelta(seconds=5)
"""How long a statement waits for another process's lock before failing."""

DETAIL_MAX = 1000
"""Call details are cut to this many characters; the full body belongs in the log."""

RUNS_DONE_EXTRA_KEEP = timedelta(days=2)
"""`prune` keeps done runs this much longer than history, so no retention setting can
forget a slot that is still open (a window lasts at most 24 h)."""

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first schema.
    (
        """CREATE TABLE servers (
            name TEXT PRIMARY KEY NOT NULL,
            last_outcome TEXT,
            last_attempt_at TEXT,
            last_success_at TEXT,
            suspended_until TEXT,
            suspensions INTEGER NOT NULL DEFAULT 0 CHECK (suspensions >= 0),
            suspension_reason TEXT,
            config_fingerprint TEXT
        )""",
        """CREATE TABLE credentials_waits (
            name TEXT PRIMARY KEY NOT NULL,
            waiting_until TEXT NOT NULL,
            reason TEXT NOT NULL,
            fingerprint TEXT
        )""",
        # One row per (server, due) that succeeded: the scheduler asks this table
        # before every run, so a restart never refreshes the same slot twice.
        """CREATE TABLE runs_done (
            server TEXT NOT NULL REFERENCES servers (name) ON DELETE CASCADE,
            due TEXT NOT NULL,
            done_at TEXT NOT NULL,
            PRIMARY KEY (server, due)
        ) WITHOUT ROWID""",
        """CREATE TABLE calls (
            id INTEGER PRIMARY KEY,
            server TEXT NOT NULL REFERENCES servers (name) ON DELETE CASCADE,
            slot_start TEXT,
            due TEXT,
            attempt INTEGER NOT NULL CHECK (attempt >= 1),
            outcome TEXT NOT NULL,
            at TEXT NOT NULL,
            duration_ms INTEGER NOT NULL CHECK (duration_ms >= 0),
            http_status INTEGER,
            servers_flagged INTEGER,
            detail TEXT
        )""",
        "CREATE INDEX calls_by_time ON calls (at)",
        "CREATE INDEX calls_by_server_time ON calls (server, at)",
        "CREATE INDEX runs_done_by_due ON runs_done (due)",
    ),
)

SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this code writes and understands."""


class StateError(Exception):
    """The state file cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class ServerState:
    """What the store knows about one server; all empty for a server never called."""

    name: str
    last_outcome: Outcome | None = None
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    suspended_until: datetime | None = None
    """Set by `suspend_server`; may be in the past (the caller compares with now)."""
    suspensions: int = 0
    """Consecutive suspensions since the last `ok`."""
    suspension_reason: str | None = None
    config_fingerprint: str | None = None


@dataclass(frozen=True)
class CredentialsWait:
    """No server may log in with these credentials before `until`."""

    name: str
    until: datetime
    reason: str
    fingerprint: str | None
    """The credentials' config fingerprint when the wait began: a reload that changes
    it ends the wait early (SPEC: a wait ends when the config changes)."""


@dataclass(frozen=True)
class CallRecord:
    """One call, as kept in the history."""

    id: int
    server: str
    slot_start: datetime | None
    """The slot's window start; None for a manual `refreshd refresh`."""
    due: datetime | None
    """The run's planned start inside the slot; None for a manual refresh."""
    attempt: int
    outcome: Outcome
    at: datetime
    """When the call was sent."""
    duration_ms: int
    http_status: int | None
    servers_flagged: int | None
    detail: str | None
    """Short, already redacted text (the caller redacts; the store cannot)."""


@dataclass(frozen=True)
class NewCall:
    """A finished call to add to the history."""

    server: str
    slot_start: datetime | None
    due: datetime | None
    attempt: int
    outcome: Outcome
    at: datetime
    duration_ms: int
    http_status: int | None = None
    servers_flagged: int | None = None
    detail: str | None = None


class StateStore:
    """The state file, open for the daemon (read-write) or the CLI (read-only).

    Thread-safe. Every method raises StateError for any database or file-system
    failure, with the file, what went wrong and what to do.
    """

    def __init__(self, path: Path) -> None:
        """Open (creating it if needed) and migrate the state file at `path`."""
        self._path = path
        self._lock = threading.Lock()
        self._readonly = False
        try:
            _create_private_file(path)
        except OSError as err:
            reason = err.strerror or str(err)
            if path.parent.exists() and not path.parent.is_dir():
                reason = f"{path.parent} is not a directory"
            raise StateError(
                f"state file {path}: cannot create it: {reason}. Check that its "
                "directory can be created and written by the daemon's user, or set "
                "daemon.state_path."
            ) from err
        self._conn = self._connect(str(path), uri=False, doing="open")
        try:
            with self._translated("set up the database"):
                # journal_mode cannot change inside a transaction: before migrating.
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
            self._check_integrity()
            self._data_version = self._read_data_version()
        except BaseException:
            self._conn.close()
            raise

    def _check_integrity(self) -> None:
        """A damaged page would otherwise surface later, in the middle of a refresh. The
        file is small (a few rows per server plus the history), so this costs little."""
        with self._translated("check the file's integrity"):
            problems = [row[0] for row in self._conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StateError(
                f"state file {self._path}: damaged ({'; '.join(map(str, problems))}). Stop "
                "refreshd, move the file aside (it keeps the history and the runs already "
                "done) and start again: a new file is created, and the slot now open may be "
                "refreshed once more."
            )

    @classmethod
    def open_readonly(cls, path: Path) -> StateStore:
        """Open for reading only, e.g. `refreshd status` while the daemon runs.

        Never creates or migrates the file. Writes raise StateError.
        """
        if not path.exists():
            raise StateError(
                f"state file {path} does not exist: the daemon has not run yet with this "
                "state_path (check daemon.state_path in the config)."
            )
        store = cls.__new__(cls)
        store._path = path
        store._lock = threading.Lock()
        store._readonly = True
        store._conn = store._connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, doing="open")
        try:
            with store._translated("read"):
                store._conn.execute("PRAGMA query_only = ON")
                version = store._schema_version()
            if version == 0:
                raise StateError(
                    f"state file {path} holds no refreshd state yet: start the daemon once."
                )
            if version < SCHEMA_VERSION:
                raise StateError(
                    f"state file {path} has schema version {version}, older than this "
                    f"refreshd's {SCHEMA_VERSION}: restart the daemon (it upgrades the file), "
                    "then try again."
                )
            store._refuse_newer(version)
            store._data_version = store._read_data_version()
        except BaseException:
            store._conn.close()
            raise
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    # -- calls and runs ------------------------------------------------------------------

    def load(self) -> Ledger:
        """The ledger as journaled: every server's entry (with its latest done run) and
        every login's wait. What is never journaled (proven, in flight) starts empty."""
        with self._read("read the ledger") as conn:
            rows = conn.execute(f"{_SERVER_SELECT} ORDER BY name").fetchall()
            done = dict(conn.execute("SELECT server, MAX(due) FROM runs_done GROUP BY server"))
            waits = conn.execute(f"{_WAIT_SELECT} ORDER BY name").fetchall()
        servers = {}
        for row in rows:
            state = _server_state(row)
            last_done = done.get(state.name)
            servers[state.name] = ServerEntry(
                last_done=None if last_done is None else _time(str(last_done)),
                last_success_at=state.last_success_at,
                last_outcome=state.last_outcome,
                last_attempt_at=state.last_attempt_at,
                suspended_until=state.suspended_until,
                suspensions=state.suspensions,
                suspension_reason=state.suspension_reason,
                fingerprint=state.config_fingerprint,
            )
        logins = {}
        for row in waits:
            wait = _credentials_wait(row)
            logins[wait.name] = LoginEntry(
                wait_until=wait.until, wait_reason=wait.reason, fingerprint=wait.fingerprint
            )
        return Ledger(servers, logins)

    def journal(
        self,
        *,
        servers: Mapping[str, ServerEntry],
        logins: Mapping[str, LoginEntry],
        call: NewCall | None = None,
        done: tuple[str, datetime] | None = None,
    ) -> None:
        """Write a change of the ledger in one transaction, durable when this returns: the
        changed entries, the call that made them (history) and the run it made done
        (server, due), so a restart never refreshes that run again."""
        if done is not None and call is None:
            raise ValueError("a done run is journaled with the call that did it")
        with self._write("record a call") as conn:
            if servers:
                conn.executemany(_SERVER_UPSERT, [_server_row(n, e) for n, e in servers.items()])
            for key, login in logins.items():
                if login.wait_until is None:
                    conn.execute("DELETE FROM credentials_waits WHERE name = ?", (key,))
                    continue
                conn.execute(
                    "INSERT INTO credentials_waits (name, waiting_until, reason, fingerprint) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "waiting_until = excluded.waiting_until, reason = excluded.reason, "
                    "fingerprint = excluded.fingerprint",
                    (key, _text(login.wait_until), login.wait_reason or "", login.fingerprint),
                )
            if done is not None and call is not None:  # (both, checked above)
                # OR IGNORE: a second success for the same run (a retry whose first
                # answer was lost) keeps the first time.
                conn.execute(
                    "INSERT OR IGNORE INTO runs_done (server, due, done_at) VALUES (?, ?, ?)",
                    (done[0], _text(done[1]), _text(call.at)),
                )
            if call is not None:
                detail = None if call.detail is None else call.detail[:DETAIL_MAX]
                conn.execute(
                    "INSERT INTO calls (server, slot_start, due, attempt, outcome, at, "
                    "duration_ms, http_status, servers_flagged, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        call.server,
                        _opt_text(call.slot_start),
                        _opt_text(call.due),
                        call.attempt,
                        str(call.outcome),
                        _text(call.at),
                        call.duration_ms,
                        call.http_status,
                        call.servers_flagged,
                        detail,
                    ),
                )

    def changed_by_others(self) -> bool:
        """Whether another connection (a manual `refreshd refresh`, say) committed to the
        file since the last ask (or since opening). SQLite's data_version, so a cheap
        query, blind to this store's own writes."""
        version = self._read_data_version()
        changed = version != self._data_version
        self._data_version = version
        return changed

    def _read_data_version(self) -> int:
        with self._read("check the state file for changes") as conn:
            version: int = conn.execute("PRAGMA data_version").fetchone()[0]
        return version

    def last_runs_done(self) -> dict[str, datetime]:
        """Each server's latest successful run (its due time). Every run due at or before
        it is done or superseded: a later refresh rebuilt everything the earlier would."""
        with self._read("read the latest done runs") as conn:
            rows = conn.execute("SELECT server, MAX(due) FROM runs_done GROUP BY server").fetchall()
        return {server: _time(due) for server, due in rows}

    def history(
        self, *, server: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[CallRecord]:
        """Calls, newest first: of one `server` or all, sent at or after `since`."""
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, got {limit}")
        with self._read("read the history") as conn:
            rows = conn.execute(
                "SELECT id, server, slot_start, due, attempt, outcome, at, duration_ms, "
                "http_status, servers_flagged, detail FROM calls "
                "WHERE (:server IS NULL OR server = :server) AND (:since IS NULL OR at >= :since) "
                "ORDER BY at DESC, id DESC LIMIT :limit",
                {"server": server, "since": _opt_text(since), "limit": limit},
            ).fetchall()
        return [_call_record(row) for row in rows]

    def prune(self, before: datetime) -> int:
        """Forget calls sent before `before`; returns how many.

        Done runs go too, `RUNS_DONE_EXTRA_KEEP` later, so pruning can never make the
        daemon refresh an open slot a second time.
        """
        with self._write("prune the history") as conn:
            pruned = conn.execute("DELETE FROM calls WHERE at < ?", (_text(before),)).rowcount
            conn.execute(
                "DELETE FROM runs_done WHERE due < ?", (_text(before - RUNS_DONE_EXTRA_KEEP),)
            )
        return pruned

    # -- servers -------------------------------------------------------------------------

    def server_state(self, name: str) -> ServerState:
        """The server's state; an empty one for a server never seen."""
        with self._read("read a server's state") as conn:
            row = conn.execute(f"{_SERVER_SELECT} WHERE name = ?", (name,)).fetchone()
        return ServerState(name) if row is None else _server_state(row)

    def all_server_states(self) -> dict[str, ServerState]:
        with self._read("read the servers' state") as conn:
            rows = conn.execute(f"{_SERVER_SELECT} ORDER BY name").fetchall()
        return {row[0]: _server_state(row) for row in rows}

    # -- credentials ---------------------------------------------------------------------

    def credentials_wait(self, name: str) -> CredentialsWait | None:
        """The credentials' wait, if any; it may have ended (the caller compares with now)."""
        with self._read("read a credentials wait") as conn:
            row = conn.execute(f"{_WAIT_SELECT} WHERE name = ?", (name,)).fetchone()
        return None if row is None else _credentials_wait(row)

    def all_credentials_waits(self) -> dict[str, CredentialsWait]:
        with self._read("read the credentials waits") as conn:
            rows = conn.execute(f"{_WAIT_SELECT} ORDER BY name").fetchall()
        return {row[0]: _credentials_wait(row) for row in rows}

    # -- plumbing ------------------------------------------------------------------------

    def _connect(self, target: str, *, uri: bool, doing: str) -> sqlite3.Connection:
        with self._translated(doing):
            return sqlite3.connect(
                target,
                uri=uri,
                timeout=BUSY_TIMEOUT.total_seconds(),  # sets SQLite's busy_timeout
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves: no implicit ones
                check_same_thread=False,  # shared by worker threads, behind self._lock
            )

    def _schema_version(self) -> int:
        version: int = self._conn.execute("PRAGMA user_version").fetchone()[0]
        return version

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state file {self._path} has schema version {version}, newer than this "
                f"refreshd understands ({SCHEMA_VERSION}): it was written by a newer "
                "refreshd. Run that version, or move the file aside to start with empty "
                "state (suspensions and done runs are forgotten)."
            )

    def _migrate(self) -> None:
        with self._translated("read the schema version"):
            self._refuse_newer(self._schema_version())
        for target in range(1, SCHEMA_VERSION + 1):
            with self._write(f"upgrade to schema version {target}") as conn:
                # Re-read inside the write lock: another process may have just migrated.
                version = self._schema_version()
                self._refuse_newer(version)
                if version >= target:
                    continue
                for statement in _MIGRATIONS[target - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target:d}")

    @contextmanager
    def _read(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translated(doing):
            yield self._conn

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One transaction: committed (and fsynced) on exit, rolled back on any error."""
        if self._readonly:
            raise StateError(
                f"state file {self._path}: cannot {doing}: this store was opened read-only "
                "(for status and history); writing is the daemon's job."
            )
        with self._lock, self._translated(doing):
            # IMMEDIATE takes the write lock now, so a busy file fails here, cleanly,
            # rather than half-way through.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise StateError(_explain(self._path, doing, err)) from err


_SERVER_SELECT = (
    "SELECT name, last_outcome, last_attempt_at, last_success_at, suspended_until, "
    "suspensions, suspension_reason, config_fingerprint FROM servers"
)
_SERVER_UPSERT = (
    "INSERT INTO servers (name, last_outcome, last_attempt_at, last_success_at, "
    "suspended_until, suspensions, suspension_reason, config_fingerprint) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
    "last_outcome = excluded.last_outcome, last_attempt_at = excluded.last_attempt_at, "
    "last_success_at = excluded.last_success_at, suspended_until = excluded.suspended_until, "
    "suspensions = excluded.suspensions, suspension_reason = excluded.suspension_reason, "
    "config_fingerprint = excluded.config_fingerprint"
)
_WAIT_SELECT = "SELECT name, waiting_until, reason, fingerprint FROM credentials_waits"

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


def _explain(path: Path, doing: str, err: sqlite3.Error) -> str:
    # Extended codes (SQLITE_IOERR_WRITE, ...) carry the primary code in the low byte.
    code = getattr(err, "sqlite_errorcode", None)
    fix = _GENERIC_FIX if code is None else _FIXES.get(code & 0xFF, _GENERIC_FIX)
    return f"state file {path}: cannot {doing}: {err}. {fix}"


def _create_private_file(path: Path) -> None:
    """Create the directory (0700) and an empty file (0600) unless they exist.

    SQLite would create the file with the umask's looser mode; it then gives its
    -wal and -shm files the database file's mode, so this covers them too.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)


def _text(moment: datetime) -> str:
    if moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: the state store takes aware datetimes")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _opt_text(moment: datetime | None) -> str | None:
    return None if moment is None else _text(moment)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _opt_time(text: str | None) -> datetime | None:
    return None if text is None else _time(text)


def _server_state(row: tuple[object, ...]) -> ServerState:
    name, outcome, attempt_at, success_at, until, suspensions, reason, fingerprint = row
    return ServerState(
        name=str(name),
        last_outcome=None if outcome is None else Outcome(str(outcome)),
        last_attempt_at=_opt_time(_opt_str(attempt_at)),
        last_success_at=_opt_time(_opt_str(success_at)),
        suspended_until=_opt_time(_opt_str(until)),
        suspensions=_int(suspensions),
        suspension_reason=_opt_str(reason),
        config_fingerprint=_opt_str(fingerprint),
    )


def _server_row(name: str, entry: ServerEntry) -> tuple[object, ...]:
    return (
        name,
        None if entry.last_outcome is None else str(entry.last_outcome),
        _opt_text(entry.last_attempt_at),
        _opt_text(entry.last_success_at),
        _opt_text(entry.suspended_until),
        entry.suspensions,
        entry.suspension_reason,
        entry.fingerprint,
    )


def _credentials_wait(row: tuple[object, ...]) -> CredentialsWait:
    name, until, reason, fingerprint = row
    return CredentialsWait(str(name), _time(str(until)), str(reason), _opt_str(fingerprint))


def _call_record(row: tuple[object, ...]) -> CallRecord:
    row_id, server, slot, due, attempt, outcome, at, duration, status, flagged, detail = row
    return CallRecord(
        id=_int(row_id),
        server=str(server),
        slot_start=_opt_time(_opt_str(slot)),
        due=_opt_time(_opt_str(due)),
        attempt=_int(attempt),
        outcome=Outcome(str(outcome)),
        at=_time(str(at)),
        duration_ms=_int(duration),
        http_status=None if status is None else _int(status),
        servers_flagged=None if flagged is None else _int(flagged),
        detail=_opt_str(detail),
    )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"expected an integer column, got {value!r}")
    return value

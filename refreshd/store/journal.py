"""The StateStore: the SQLite file opened, migrated, written in transactions and read.

- WAL journal with `synchronous=FULL`: each commit is fsynced before `journal` returns.
  `NORMAL` would be faster and could lose the last success on power loss, which is the
  one thing this file promises to keep.
- One connection behind a lock, shared by the daemon's worker threads: every write is a
  few rows, so serialising them costs nothing and leaves no room for `database is
  locked` between our own threads. `busy_timeout` covers other processes (the `status`
  CLI reading while the daemon writes).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from refreshd.core.ledger import Ledger, LoginEntry, ServerEntry
from refreshd.store import rows, schema
from refreshd.store.errors import BUSY_TIMEOUT, StateError, explain
from refreshd.store.rows import CallRecord, CredentialsWait, NewCall, ServerState
from refreshd.store.schema import SCHEMA_VERSION
from refreshd.store.verifications import Verifications

__all__ = ["RUNS_DONE_EXTRA_KEEP", "StateStore"]

RUNS_DONE_EXTRA_KEEP = timedelta(days=2)
"""`prune` keeps done runs this much longer than history, so no retention setting can
forget a slot that is still open (a window lasts at most 24 h)."""


class StateStore(Verifications):
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
            self._identity = _identity(path)
        except BaseException:
            self._conn.close()
            raise

    def replaced(self) -> str | None:
        """Whether the file this store writes is still the one at its path: None if it
        is, else what happened ("deleted", "replaced"). A deleted or replaced file keeps
        taking our writes into the old inode, where no restart would find them."""
        try:
            identity = _identity(self._path)
        except FileNotFoundError:
            return "deleted"
        except OSError as err:
            return f"unreadable ({err.strerror or err})"
        return None if identity == self._identity else "replaced"

    def restore(self, ledger: Ledger, at: datetime) -> None:
        """Write a whole ledger in one transaction: every server (its latest done run
        marked done at `at`) and every login. For a file created anew under a running
        daemon, so that a restart still knows what is done."""
        with self._write("write the ledger out again") as conn:
            conn.executemany(
                schema.SERVER_UPSERT, [rows.server_row(n, e) for n, e in ledger.servers.items()]
            )
            conn.executemany(
                schema.RUN_DONE_INSERT,
                [
                    (name, rows.text(entry.last_done), rows.text(at))
                    for name, entry in ledger.servers.items()
                    if entry.last_done is not None
                ],
            )
            for key, login in ledger.logins.items():
                self._journal_login(conn, key, login)

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
    def readonly(self) -> bool:
        return self._readonly

    @property
    def path(self) -> Path:
        return self._path

    # -- calls and runs ------------------------------------------------------------------

    def load(self) -> Ledger:
        """The ledger as journaled: every server's entry (with its latest done run) and
        every login's wait. What is never journaled (proven, in flight) starts empty."""
        with self._read("read the ledger") as conn:
            server_rows = conn.execute(f"{schema.SERVER_SELECT} ORDER BY name").fetchall()
            done = dict(conn.execute(schema.LAST_RUNS_DONE))
            wait_rows = conn.execute(f"{schema.WAIT_SELECT} ORDER BY name").fetchall()
            failure_rows = conn.execute(schema.FAILED_SELECT).fetchall()
        servers = {}
        for row in server_rows:
            state = rows.server_state(row)
            last_done = done.get(state.name)
            servers[state.name] = rows.server_entry(
                state, None if last_done is None else rows.time(str(last_done))
            )
        logins = {}
        for row in wait_rows:
            wait = rows.credentials_wait(row)
            logins[wait.name] = rows.login_entry(wait)
        failures: dict[str, list[datetime]] = {}
        for login, at in failure_rows:
            failures.setdefault(str(login), []).append(rows.time(str(at)))
        for login, times in failures.items():
            entry = logins.get(login) or LoginEntry()
            logins[login] = replace(entry, failed_logins=tuple(times))
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
                conn.executemany(
                    schema.SERVER_UPSERT, [rows.server_row(n, e) for n, e in servers.items()]
                )
            for key, login in logins.items():
                self._journal_login(conn, key, login)
            if done is not None and call is not None:  # (both, checked above)
                conn.execute(
                    schema.RUN_DONE_INSERT, (done[0], rows.text(done[1]), rows.text(call.at))
                )
            if call is not None:
                conn.execute(schema.CALL_INSERT, rows.call_row(call))

    @staticmethod
    def _journal_login(conn: sqlite3.Connection, key: str, login: LoginEntry) -> None:
        if login.wait_until is None:
            conn.execute(schema.WAIT_DELETE, (key,))
        else:
            conn.execute(
                schema.WAIT_UPSERT,
                (key, rows.text(login.wait_until), login.wait_reason or "", login.fingerprint),
            )
        conn.execute(schema.FAILED_DELETE, (key,))
        conn.executemany(schema.FAILED_INSERT, [(key, rows.text(at)) for at in login.failed_logins])

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
            done = conn.execute(schema.LAST_RUNS_DONE).fetchall()
        return {server: rows.time(due) for server, due in done}

    def history(
        self, *, server: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[CallRecord]:
        """Calls, newest first: of one `server` or all, sent at or after `since`."""
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, got {limit}")
        with self._read("read the history") as conn:
            found = conn.execute(
                schema.CALL_SELECT,
                {"server": server, "since": rows.opt_text(since), "limit": limit},
            ).fetchall()
        return [rows.call_record(row) for row in found]

    def prune(self, before: datetime) -> int:
        """Forget calls sent before `before`; returns how many.

        Done runs go too, `RUNS_DONE_EXTRA_KEEP` later, so pruning can never make the
        daemon refresh an open slot a second time.
        """
        with self._write("prune the history") as conn:
            pruned = conn.execute(schema.CALLS_PRUNE, (rows.text(before),)).rowcount
            conn.execute(schema.RUNS_DONE_PRUNE, (rows.text(before - RUNS_DONE_EXTRA_KEEP),))
        return pruned

    def beat(self, at: datetime) -> None:
        """Record the daemon's heartbeat (`status` shows it)."""
        with self._write("record the heartbeat") as conn:
            conn.execute(schema.HEARTBEAT_UPSERT, (rows.text(at),))

    def last_beat(self) -> datetime | None:
        """The daemon's last heartbeat; None if no daemon of this version ever beat."""
        with self._read("read the heartbeat") as conn:
            row = conn.execute(schema.HEARTBEAT_SELECT).fetchone()
        return None if row is None else rows.time(row[0])

    # -- servers -------------------------------------------------------------------------

    def server_state(self, name: str) -> ServerState:
        """The server's state; an empty one for a server never seen."""
        with self._read("read a server's state") as conn:
            row = conn.execute(f"{schema.SERVER_SELECT} WHERE name = ?", (name,)).fetchone()
        return ServerState(name) if row is None else rows.server_state(row)

    def all_server_states(self) -> dict[str, ServerState]:
        with self._read("read the servers' state") as conn:
            found = conn.execute(f"{schema.SERVER_SELECT} ORDER BY name").fetchall()
        return {row[0]: rows.server_state(row) for row in found}

    # -- credentials ---------------------------------------------------------------------

    def credentials_wait(self, name: str) -> CredentialsWait | None:
        """The credentials' wait, if any; it may have ended (the caller compares with now)."""
        with self._read("read a credentials wait") as conn:
            row = conn.execute(f"{schema.WAIT_SELECT} WHERE name = ?", (name,)).fetchone()
        return None if row is None else rows.credentials_wait(row)

    def all_credentials_waits(self) -> dict[str, CredentialsWait]:
        with self._read("read the credentials waits") as conn:
            found = conn.execute(f"{schema.WAIT_SELECT} ORDER BY name").fetchall()
        return {row[0]: rows.credentials_wait(row) for row in found}

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
                for statement in schema.MIGRATIONS[target - 1]:
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
            raise StateError(explain(self._path, doing, err)) from err


def _identity(path: Path) -> tuple[int, int]:
    """The file at `path`, as the file system knows it (device, inode)."""
    status = path.stat()
    return status.st_dev, status.st_ino


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

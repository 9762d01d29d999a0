"""The StateStore: the ledger's journal on an Engine (shared/engines.py): a SQLite file on this
host, or a PostgreSQL or MariaDB/MySQL database that several instances share.

- SQLite: WAL with `synchronous=FULL` (each commit fsynced before `journal` returns), the
  file 0600 in a 0700 directory, its integrity checked at open, a deleted or replaced file
  noticed (`replaced`). `busy_timeout` covers other processes (`status` reading while the
  daemon writes).
- Every engine: one connection behind the engine's lock, shared by the daemon's worker
  threads (each write is a few rows); each journal write adds one to the `changes` counter,
  so that `changed_by_others` tells another process's writes from this one's (runner.sync).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from refreshd.core.ledger import Ledger, LoginEntry, ServerEntry
from refreshd.shared.engines import Engine, Tx, sqlite_engine
from refreshd.store import rows, schema
from refreshd.store.errors import StateError, explain, explain_server
from refreshd.store.rows import CallRecord, CredentialsWait, NewCall, ServerState
from refreshd.store.setup import SetUp, create_private_file, identity

__all__ = ["RUNS_DONE_EXTRA_KEEP", "StateStore"]

_ATTEMPTS = 3
"""Tries of a journal write that nothing can have reached (see `_journaled`)."""

RUNS_DONE_EXTRA_KEEP = timedelta(days=2)
"""`prune` keeps done runs this much longer than history, so no retention setting can
forget a slot that is still open (a window lasts at most 24 h)."""


class StateStore(SetUp):
    """The journal, open for the daemon (read-write) or the CLI (read-only), on a SQLite
    file (a Path) or an Engine of a database server.

    Thread-safe. Every method raises StateError for any database or file-system failure,
    naming the file or database (never a password), what went wrong and what to do.
    """

    _identity: tuple[int, int] | None
    _seen: int

    def __init__(self, target: Path | Engine) -> None:
        """Open (creating a SQLite file if needed) and migrate the store."""
        if isinstance(target, Path):
            create_private_file(target)
            engine = sqlite_engine(target)
        else:
            engine = target
        self._start(engine, readonly=False)
        try:
            with self._translated("open"):
                engine.open()
            self._migrate()
            self._check_integrity()
            self._seen = self._read_counter()
            self._identity = None if self._path is None else identity(self._path)
        except BaseException:
            self._engine.close()
            raise

    @classmethod
    def open_readonly(cls, target: Path | Engine) -> StateStore:
        """Open for reading only, e.g. `refreshd status` while the daemon runs.

        Never creates or migrates anything. Writes raise StateError.
        """
        if isinstance(target, Path):
            if not target.exists():
                raise StateError(
                    f"state file {target} does not exist: the daemon has not run yet with "
                    "this state_path (check daemon.state_path in the config)."
                )
            target = sqlite_engine(target, readonly=True)
        store = cls.__new__(cls)
        store._start(target, readonly=True)
        try:
            with store._translated("open"):
                target.open()
            store._check_readable()
            store._seen = store._read_counter()
        except BaseException:
            store._engine.close()
            raise
        return store

    def _start(self, engine: Engine, *, readonly: bool) -> None:
        self._engine = engine
        self._readonly = readonly
        self._path = getattr(engine, "path", None)
        self._sql = schema.Sql.of(engine)
        self._lock = threading.Lock()  # the change counter's bookkeeping
        self._others = False
        self._identity = None

    def reopened(self) -> StateStore:
        """A new store at the same place (a SQLite file created again at its path)."""
        return type(self)(self._path if self._path is not None else self._engine)

    def restore(self, ledger: Ledger, at: datetime) -> None:
        """Write a whole ledger in one transaction: every server (its latest done run
        marked done at `at`) and every login. For a file created anew under a running
        daemon, so that a restart still knows what is done."""

        def write(tx: Tx) -> None:
            for name, entry in ledger.servers.items():
                tx.execute(self._sql.server_upsert, rows.server_row(name, entry))
                if entry.last_done is not None:
                    done = (name, rows.text(entry.last_done), rows.text(at))
                    tx.execute(self._sql.run_done_insert, done)
            for key, login in ledger.logins.items():
                self._journal_login(tx, key, login, None)

        self._journaled("write the ledger out again", write)

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def path(self) -> Path | None:
        """The SQLite file; None for a database server."""
        return self._path

    @property
    def where(self) -> str:
        """The file or the database, as messages name it (never a password)."""
        return self._engine.where

    @property
    def engine(self) -> Engine:
        """The engine under the store (the claims share its database)."""
        return self._engine

    # -- calls and runs ------------------------------------------------------------------

    def load(self) -> Ledger:
        """The ledger as journaled: every server's entry (with its latest done run) and
        every login's wait. What is never journaled (proven, in flight) starts empty."""
        with self._read("read the ledger") as tx:
            tx.execute(f"{schema.SERVER_SELECT} ORDER BY name")
            server_rows = tx.fetchall()
            tx.execute(schema.LAST_RUNS_DONE)
            done = {str(server): due for server, due in tx.fetchall()}
            tx.execute(f"{schema.WAIT_SELECT} ORDER BY name")
            wait_rows = tx.fetchall()
            tx.execute(schema.FAILED_SELECT)
            failure_rows = tx.fetchall()
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
        within: Callable[[Tx], object] | None = None,
    ) -> None:
        """Write a change of the ledger in one transaction, durable when this returns: the
        changed entries, the call that made them (history) and the run it made done
        (server, due), so a restart never refreshes that run again. `within(tx)` runs
        first in the same transaction (a claim's end): what it raises undoes it all."""
        if done is not None and call is None:
            raise ValueError("a done run is journaled with the call that did it")

        def write(tx: Tx) -> None:
            if within is not None:
                within(tx)
            for name, entry in servers.items():
                tx.execute(self._sql.server_upsert, rows.server_row(name, entry))
            for key, login in logins.items():
                self._journal_login(tx, key, login, call)
            if done is not None and call is not None:  # (both, checked above)
                row = (done[0], rows.text(done[1]), rows.text(call.at))
                tx.execute(self._sql.run_done_insert, row)
            if call is not None:
                tx.execute(self._sql.call_insert, rows.call_row(call))

        self._journaled("record a call", write)

    def _journal_login(self, tx: Tx, key: str, login: LoginEntry, call: NewCall | None) -> None:
        if login.wait_until is None:
            tx.execute(schema.WAIT_DELETE, (key,))
        else:
            tx.execute(self._sql.wait_upsert, rows.wait_row(key, login))
        # The failed logins are every process's: added, never replaced by this process's
        # list (another's failure it has not merged yet still counts). A success forgets
        # those up to its call: VICIdial forgot them when it let the login in.
        for at in login.failed_logins:
            tx.execute(self._sql.failed_insert, (key, rows.text(at)))
        if not login.failed_logins and call is not None:
            tx.execute(schema.FAILED_FORGET, (key, rows.text(call.at)))

    def changed_by_others(self) -> bool:
        """Whether another process (a manual `refreshd refresh`, another instance on a
        shared database) journaled since the last ask (or since opening): the `changes`
        counter moved by more than this store's own writes."""
        counter = self._read_counter()
        with self._lock:
            changed = self._others or counter != self._seen
            self._seen, self._others = counter, False
        return changed

    def _read_counter(self) -> int:
        with self._read("check the store for changes") as tx:
            tx.execute(schema.CHANGES_SELECT)
            row = tx.fetchone()
        return 0 if row is None else int(row[0])

    def _journaled(self, doing: str, write: Callable[[Tx], None]) -> None:
        """A write that changes the ledger: the counter first (it also queues every
        writer of a shared database on one row), noted once committed. Tried again when
        nothing can have been written: a deadlock's victim (rolled back whole), or a
        connection found dead at the first statement (a database restarted overnight
        must not cost the first result after it)."""
        for attempt in range(1, _ATTEMPTS + 1):
            started = False
            try:
                with self._write(doing) as tx:
                    tx.execute(schema.CHANGES_BUMP)
                    started = True
                    tx.execute(schema.CHANGES_SELECT)
                    found = tx.fetchone()
                    counter = 0 if found is None else int(found[0])
                    write(tx)
                break
            except StateError as err:
                if attempt == _ATTEMPTS or not self._may_retry(err.__cause__, started=started):
                    raise
        with self._lock:
            if counter - 1 != self._seen:
                self._others = True  # someone wrote between our last look and this write
            self._seen = counter

    def _may_retry(self, cause: BaseException | None, *, started: bool) -> bool:
        if cause is None or self._path is not None:  # SQLite waits busy_timeout itself
            return False
        engine = self._engine
        return engine.retryable(cause) or (not started and engine.lost_connection(cause))

    def last_runs_done(self) -> dict[str, datetime]:
        """Each server's latest successful run (its due time). Every run due at or before
        it is done or superseded: a later refresh rebuilt everything the earlier would."""
        with self._read("read the latest done runs") as tx:
            tx.execute(schema.LAST_RUNS_DONE)
            done = tx.fetchall()
        return {str(server): rows.time(str(due)) for server, due in done}

    def history(
        self, *, server: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[CallRecord]:
        """Calls, newest first: of one `server` or all, sent at or after `since`."""
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, got {limit}")
        params: list[object] = [] if server is None else [server]
        params += [] if since is None else [rows.text(since)]
        with self._read("read the history") as tx:
            tx.execute(
                schema.call_select(server=server is not None, since=since is not None),
                [*params, limit],
            )
            found = tx.fetchall()
        return [rows.call_record(row) for row in found]

    def prune(self, before: datetime) -> int:
        """Forget calls sent before `before`; returns how many.

        Done runs go too, `RUNS_DONE_EXTRA_KEEP` later, so pruning can never make the
        daemon refresh an open slot a second time.
        """
        with self._write("prune the history") as tx:
            pruned = tx.execute(schema.CALLS_PRUNE, (rows.text(before),))
            tx.execute(schema.RUNS_DONE_PRUNE, (rows.text(before - RUNS_DONE_EXTRA_KEEP),))
            tx.execute(schema.FAILED_PRUNE, (rows.text(before),))
        return pruned

    def beat(self, at: datetime) -> None:
        """Record the daemon's heartbeat (`status` shows it)."""
        with self._write("record the heartbeat") as tx:
            tx.execute(self._sql.heartbeat_upsert, (1, rows.text(at)))

    def last_beat(self) -> datetime | None:
        """The daemon's last heartbeat; None if no daemon of this version ever beat."""
        with self._read("read the heartbeat") as tx:
            tx.execute(schema.HEARTBEAT_SELECT)
            row = tx.fetchone()
        return None if row is None else rows.time(str(row[0]))

    # -- servers and credentials ---------------------------------------------------------

    def server_state(self, name: str) -> ServerState:
        """The server's state; an empty one for a server never seen."""
        with self._read("read a server's state") as tx:
            tx.execute(f"{schema.SERVER_SELECT} WHERE name = %s", (name,))
            row = tx.fetchone()
        return ServerState(name) if row is None else rows.server_state(row)

    def all_server_states(self) -> dict[str, ServerState]:
        with self._read("read the servers' state") as tx:
            tx.execute(f"{schema.SERVER_SELECT} ORDER BY name")
            found = tx.fetchall()
        return {str(row[0]): rows.server_state(row) for row in found}

    def credentials_wait(self, name: str) -> CredentialsWait | None:
        """The credentials' wait, if any; it may have ended (the caller compares with now)."""
        with self._read("read a credentials wait") as tx:
            tx.execute(f"{schema.WAIT_SELECT} WHERE name = %s", (name,))
            row = tx.fetchone()
        return None if row is None else rows.credentials_wait(row)

    def all_credentials_waits(self) -> dict[str, CredentialsWait]:
        with self._read("read the credentials waits") as tx:
            tx.execute(f"{schema.WAIT_SELECT} ORDER BY name")
            found = tx.fetchall()
        return {str(row[0]): rows.credentials_wait(row) for row in found}

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _read(self, doing: str) -> Iterator[Tx]:
        with self._translated(doing), self._engine.transaction(write=False) as tx:
            yield tx

    @contextmanager
    def _write(self, doing: str) -> Iterator[Tx]:
        """One transaction: committed (and, on SQLite, fsynced) on exit, rolled back on
        any error."""
        if self._readonly:
            raise StateError(
                f"{self.where}: cannot {doing}: this store was opened read-only "
                "(for status and history); writing is the daemon's job."
            )
        with self._translated(doing), self._engine.transaction() as tx:
            yield tx

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            errors = self._engine.driver_errors()
        except ImportError as err:
            raise StateError(
                f"{self.where}: cannot {doing}: its driver is not installed ({err}); "
                "reinstall refreshd with its dependencies."
            ) from None
        try:
            yield
        except errors as err:
            if self._path is not None:
                raise StateError(explain(self._path, doing, err)) from err  # type: ignore[arg-type]
            lost = self._engine.lost_connection(err)
            raise StateError(explain_server(self.where, doing, err, connection=lost)) from err

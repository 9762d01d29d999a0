"""The verifier: after each `ok`, look at the cluster's database every few seconds until every
telephony server has cleared its flag or `verify_timeout` passes. One reading per database per
look, shared by every refresh waiting on it; its own thread, so it never delays a call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from refreshd.clock import Clock
from refreshd.core.verification import Verdict, verdict
from refreshd.verify.database import ClusterDatabase, DatabaseProblem, Reading

POLL_INTERVAL = 5.0  # seconds between two readings of one database: cheap, and under a minute


@dataclass
class _Expected:
    server: str
    database: str
    started: datetime
    timeout: timedelta
    done: Callable[[Verdict], None]


class Verifier:
    """Waiting verifications and the thread that settles them."""

    def __init__(
        self,
        clock: Clock,
        databases: Mapping[str, ClusterDatabase],
        *,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self._clock = clock
        self._databases = dict(databases)
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: list[_Expected] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def expect(
        self,
        server: str,
        database: str,
        started: datetime,
        timeout: timedelta,
        done: Callable[[Verdict], None],
    ) -> None:
        """Verify `server`'s refresh that started at `started`; `done` gets the verdict, on
        the verifier's thread. A newer refresh of the same server replaces the older wait."""
        if database not in self._databases:
            raise KeyError(f"no database {database!r}")
        with self._lock:
            self._pending = [e for e in self._pending if e.server != server]
            self._pending.append(_Expected(server, database, started, timeout, done))

    def database(self, name: str) -> ClusterDatabase | None:
        """The connection to a database (also read by a worker settling a lost call: each
        connection holds one query at a time)."""
        return self._databases.get(name)

    def pending(self) -> list[str]:
        with self._lock:
            return [e.server for e in self._pending]

    def look(self) -> None:
        """One reading of each database that a verification waits on; settle what it can."""
        with self._lock:
            waiting = {e.database for e in self._pending}
        readings: dict[str, Reading | DatabaseProblem] = {}
        for name in sorted(waiting):
            try:
                readings[name] = self._databases[name].read()
            except DatabaseProblem as problem:
                readings[name] = problem
            except Exception as error:  # a bug or a driver's surprise must not end the thread
                where = self._databases[name].url
                text = f"{where}: cannot read the database ({type(error).__name__})"
                readings[name] = DatabaseProblem(text, lasting=False)
        now = self._clock.now()
        settled: list[tuple[_Expected, Verdict]] = []
        with self._lock:
            for expected in list(self._pending):
                reading = readings.get(expected.database)
                if reading is None:  # expected after this look began: the next one
                    continue
                found = _verdict_of(expected, reading, now)
                if found is not None:
                    self._pending.remove(expected)
                    settled.append((expected, found))
        for expected, found in settled:
            expected.done(found)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="refreshd-verifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop looking; verifications still waiting are dropped (the log says so through
        the daemon's stop line), and every connection is closed."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for database in self._databases.values():
            database.close()

    def _run(self) -> None:
        while not self._clock.wait(self._stopping, self._next_look()):
            self.look()

    def _next_look(self) -> float:
        """Seconds to the next look: the interval, or sooner when a verification's timeout
        ends first, so that a `not_applied` is told when its time is up, not up to an
        interval later."""
        now = self._clock.now()
        with self._lock:
            ends = [(e.started + e.timeout - now).total_seconds() for e in self._pending]
        return max(0.05, min([self._interval, *ends]))


def _verdict_of(
    expected: _Expected, reading: Reading | DatabaseProblem, now: datetime
) -> Verdict | None:
    if isinstance(reading, DatabaseProblem):
        return verdict(expected.started, now, expected.timeout, boxes=None, unread=str(reading))
    return verdict(
        expected.started,
        now,
        expected.timeout,
        boxes=[(b.server_ip, b.server_id) for b in reading.boxes],
        flagged=[(b.server_ip, b.server_id) for b in reading.flagged],
    )

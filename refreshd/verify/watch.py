"""The daemon's verified refreshes: one Verifier over the config's databases, rebuilt when
[databases] change, told of each `ok` of a server with a database; each verdict goes to the
runner (history, log, metrics). And which entries are one cluster (verify/clusters.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

from refreshd.clock import Clock
from refreshd.config import Config
from refreshd.core.clusters import CallGroups, SameCluster, cluster_of
from refreshd.core.ledger import Call
from refreshd.core.settle import REFRESHED
from refreshd.core.verification import Verdict
from refreshd.core.vicidial import Attempt
from refreshd.verify.clusters import ClusterWatch
from refreshd.verify.database import ClusterDatabase
from refreshd.verify.poller import POLL_INTERVAL, Verifier
from refreshd.verify.settling import settle_lost

__all__ = ["Verification"]

# What a verdict is handed to: the server, when its call was sent, the verdict.
Record = Callable[[str, datetime, Verdict], None]


class Verification:
    """Verified refreshes for one daemon. `after_call` runs on the scheduler's workers and
    only queues (it never delays a call); the reading happens on the verifier's thread."""

    def __init__(
        self,
        clock: Clock,
        record: Record,
        *,
        interval: float = POLL_INTERVAL,
        log: Any = None,
        scheduler: Grouping | None = None,
        dropped: Callable[..., object] | None = None,
    ) -> None:
        self._clock = clock
        self._record = record
        # Told of refreshes whose verdict will never come (stop, a changed database): an
        # operator sees they were not verified, rather than nothing at all.
        self._dropped = dropped or partial(_warn, log, "refresh.unverified")
        self._interval = interval
        self._lock = threading.Lock()
        self._tables: dict[str, tuple[str, str | None]] = {}  # name -> (url, password)
        self._servers: dict[str, tuple[str, timedelta]] = {}  # name -> (database, timeout)
        self._verifier: Verifier | None = None
        # Same cluster twice: a log line per group, and the scheduler's groups (it then
        # sends one call per cluster and login).
        self._log, self._scheduler = log, scheduler
        self._clusters = ClusterWatch(clock, self._learnt)

    def configure(self, config: Config) -> None:
        """Take a (new) config: which servers are verified against which database; the
        connections are opened anew only when a [databases] table changed (refreshes still
        waiting on the old ones are then dropped: their database is no longer the same)."""
        servers = {
            s.name: (s.database, s.verify_timeout) for s in config.servers if s.database is not None
        }
        used = {database for database, _ in servers.values()}
        tables = {
            name: (table.url, table.secret)
            for name, table in config.databases.items()
            if name in used
        }
        old = None
        with self._lock:
            self._servers = servers
            if tables != self._tables:
                old, self._verifier = self._verifier, self._new_verifier(config, tables)
                self._tables = tables
        if old is not None:
            self._stop(old, "its [databases] table changed")
        self._clusters.configure(config)

    def _learnt(self, groups: Sequence[SameCluster]) -> None:
        for group in groups:
            _warn(
                self._log,
                "cluster.same",
                servers=list(group.servers),
                cluster=group.cluster,
                why=group.why,
                calls="one per slot for them all, per login",
            )
        if self._scheduler is not None:
            self._scheduler.clusters = CallGroups(cluster_of(groups))

    def _stop(self, verifier: Verifier, why: str) -> None:
        waiting = verifier.pending()
        verifier.stop()
        if waiting:
            self._dropped(servers=waiting, why=why)

    def _new_verifier(
        self, config: Config, tables: dict[str, tuple[str, str | None]]
    ) -> Verifier | None:
        if not tables:
            return None
        databases = {
            name: ClusterDatabase(config.databases[name].parsed, password)
            for name, (_, password) in tables.items()
        }
        verifier = Verifier(self._clock, databases, interval=self._interval)
        verifier.start()
        return verifier

    def lost_call(self, server: str, started: datetime) -> Attempt | None:
        """A call of `server` started at `started` whose answer was lost: the settled
        run's answer when its cluster's database shows a refresh taken since (no second
        call), else None (said as `refresh.not_settled`; the call is made again). On the
        worker, off the schedule's lock: the reading may take the database's time-out."""
        with self._lock:
            verifier, found = self._verifier, self._servers.get(server)
        database = None if verifier is None or found is None else verifier.database(found[0])
        if database is None:
            return None
        settled = settle_lost(database, self._clock, started)
        if isinstance(settled, str):
            if self._log is not None:  # info: every retry of a run asks, most say no
                self._log.info("refresh.not_settled", server=server, started=started, why=settled)
            return None
        return settled

    def after_call(self, call: Call, attempt: Attempt) -> None:
        """A call was settled: an `ok` of a server with a database is verified, and so is
        a settled run (from its lost call's start)."""
        if attempt.answer.outcome not in REFRESHED:
            return
        with self._lock:
            verifier, found = self._verifier, self._servers.get(call.server)
        if verifier is None or found is None:
            return
        database, timeout = found
        server, started = call.server, attempt.started_at

        def done(verdict: Verdict) -> None:
            self._record(server, started, verdict)

        verifier.expect(server, database, started, timeout, done)

    def pending(self) -> list[str]:
        """The servers whose last refresh waits for its verdict."""
        with self._lock:
            verifier = self._verifier
        return [] if verifier is None else verifier.pending()

    def stop(self) -> None:
        self._clusters.stop()
        with self._lock:
            verifier, self._verifier, self._tables = self._verifier, None, {}
        if verifier is not None:
            self._stop(verifier, "the daemon stopped before the verdict")


class Grouping(Protocol):
    """The scheduler, as far as cluster groups go."""

    clusters: CallGroups


def _warn(log: Any, event: str, **fields: object) -> None:
    if log is not None:
        log.warning(event, **fields)

"""Same cluster twice: reading each configured database's identity (core/clusters.py decides
which `[[servers]]` entries are one cluster), for `check --online` and for the daemon, which
learns it at start and reload and again every RELEARN seconds, and groups those entries'
calls into one per slot (scheduler.Scheduler.use_clusters)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from refreshd.clock import Clock
from refreshd.config import Config
from refreshd.core.clusters import ClusterFacts, SameCluster, same_clusters
from refreshd.verify.database import ClusterDatabase, DatabaseProblem

__all__ = ["RELEARN", "ClusterWatch", "learn_clusters"]

RELEARN = 600.0  # seconds: a box added or a database moved is seen within ten minutes
_TIMEOUT = 5.0  # seconds one database may take to answer


def learn_clusters(config: Config) -> tuple[list[SameCluster], dict[str, str]]:
    """The entries that are one cluster, and the databases that could not be read (table
    name -> why). Each database used by an entry is read once, all at the same time, so
    the reload stamps compared were read within one pass."""
    entries = {s.name: s.database for s in config.servers if s.database is not None}
    tables = sorted(set(entries.values()))
    facts: dict[str, ClusterFacts] = {}
    unread: dict[str, str] = {}

    def read(name: str) -> ClusterFacts | str:
        table = config.databases[name]
        database = ClusterDatabase(table.parsed, table.secret, timeout=_TIMEOUT)
        try:
            return database.identify()
        except DatabaseProblem as problem:
            return str(problem)
        except Exception as error:  # a driver's surprise: this table stays apart
            return f"{table.parsed}: cannot read the database ({type(error).__name__})"
        finally:
            database.close()

    if not tables:
        return [], {}
    with ThreadPoolExecutor(max_workers=min(8, len(tables))) as pool:
        for name, found in zip(tables, pool.map(read, tables), strict=True):
            if isinstance(found, str):
                unread[name] = found
            else:
                facts[name] = found
    server_ips = {s.name: s.server_ip for s in config.servers}
    return same_clusters(entries, facts, server_ips), unread


class ClusterWatch:
    """Learns the config's clusters at once (`configure`), then on its own thread every
    `interval` seconds; `told` gets each new answer (the groups), only when it changed."""

    def __init__(
        self,
        clock: Clock,
        told: Callable[[Sequence[SameCluster]], None],
        *,
        interval: float = RELEARN,
        learn: Callable[[Config], tuple[list[SameCluster], dict[str, str]]] = learn_clusters,
    ) -> None:
        self._clock = clock
        self._told = told
        self._interval = interval
        self._learn = learn
        self._lock = threading.Lock()
        self._config: Config | None = None
        self._known: list[tuple[str, tuple[str, ...]]] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def configure(self, config: Config) -> None:
        """A (new) config: learn its clusters now, on the caller's thread (bounded by the
        databases' time-out), so that the first slot after a start or reload already sends
        one call per cluster. Without a database nothing is read."""
        with self._lock:
            self._config = config
        self.relearn()
        # Without a database there is nothing to learn, and no thread to keep.
        if self._thread is None and any(s.database for s in config.servers):
            self._thread = threading.Thread(target=self._run, name="refreshd-clusters", daemon=True)
            self._thread.start()

    def relearn(self) -> None:
        with self._lock:
            config = self._config
        if config is None:
            return
        groups, _ = self._learn(config)
        # Compared without `why`: it names the last reload, which every refresh moves.
        seen = [(group.database, group.servers) for group in groups]
        with self._lock:
            if seen == self._known:
                return
            self._known = seen
        self._told(groups)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._clock.wait(self._stopping, self._interval):
            self.relearn()

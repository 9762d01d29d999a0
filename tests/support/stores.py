"""The state store on each engine: a SQLite file, or a scratch PostgreSQL or MariaDB database
(tests/support/databases.py: skipped with the reason when the server does not answer, failed
under CI). A `Place` opens as many stores on the same data as a test needs, as several
processes (or instances) would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from refreshd.dburl import DatabaseUrl
from refreshd.shared.engines import connect
from refreshd.store import StateStore
from tests.support.databases import scratch_database

ENGINES = ["sqlite", "postgresql", "mysql"]


@dataclass
class Place:
    """Where a test's store lives: `path` (SQLite) or `url` (a scratch database)."""

    kind: str
    path: Path | None = None
    url: DatabaseUrl | None = None
    _opened: list[StateStore] = field(default_factory=list)

    def target(self, url: DatabaseUrl | None = None) -> Path | object:
        if self.path is not None:
            return self.path
        chosen = url or self.url
        assert chosen is not None
        return connect(chosen, None)

    def open(self) -> StateStore:
        """A read-write store on this place's data (each its own connection)."""
        store = StateStore(self.target())  # type: ignore[arg-type]
        self._opened.append(store)
        return store

    def readonly(self) -> StateStore:
        store = StateStore.open_readonly(self.target())  # type: ignore[arg-type]
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()


@contextmanager
def place(kind: str, tmp_path: Path) -> Iterator[Place]:
    """A fresh, empty place for the store on engine `kind`."""
    if kind == "sqlite":
        found = Place(kind, path=tmp_path / "state" / "state.db")
        try:
            yield found
        finally:
            found.close()
        return
    with scratch_database(kind, prefix="refreshd_store") as url:
        found = Place(kind, url=url)
        try:
            yield found
        finally:
            found.close()


_TABLES = ("calls", "runs_done", "failed_logins", "credentials_waits", "servers", "daemon")


class Databases:
    """One migrated scratch database per server engine, emptied for each test that asks: a
    new database and its migrations cost a second a test (MariaDB's DDL)."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._urls: dict[str, DatabaseUrl] = {}

    @contextmanager
    def place(self, kind: str, tmp_path: Path) -> Iterator[Place]:
        if kind == "sqlite":
            with place(kind, tmp_path) as found:
                yield found
            return
        url = self._urls.get(kind)
        if url is None:
            url = self._stack.enter_context(scratch_database(kind, prefix="refreshd_store"))
            StateStore(connect(url, None)).close()  # migrated once
            self._urls[kind] = url
        engine = connect(url, None)
        try:
            with engine.transaction() as tx:
                for table in _TABLES:
                    tx.execute(f"DELETE FROM {table}")  # noqa: S608 (our own names)
                tx.execute("UPDATE changes SET counter = 0")
        finally:
            engine.close()
        found = Place(kind, url=url)
        try:
            yield found
        finally:
            found.close()

    def close(self) -> None:
        self._stack.close()

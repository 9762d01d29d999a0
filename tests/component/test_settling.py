"""Settling a lost answer in the daemon's loop on a fake clock: a dead daemon's run found
`called` in the state file is taken over at start; the claim says when the lost call started,
and the cluster's database (a stand-in here) says whether a refresh was taken since. Taken:
the run is recorded done through the runner (`refresh.settled`, a `settled` history row, the
claim done), with no call and no login counted; not taken: called again, as before. One
cluster's entries are settled alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from refreshd.binding import schedule_of
from refreshd.claiming import Claiming
from refreshd.clock import FakeClock, system_clock
from refreshd.config import Config
from refreshd.core.clusters import CallGroups
from refreshd.core.planning import next_fire
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.events import Events
from refreshd.shared import ClaimStore, sqlite_engine
from refreshd.simulator import Simulator, SimUser
from refreshd.simulator.rules import Vicidial
from refreshd.verify import ClusterDatabase, DatabaseUrl
from refreshd.verify.database import Reading
from refreshd.verify.settling import settle_lost
from tests.support.databases import telephony_boxes, verified_cluster
from tests.support.loop import Loop, at, fleet, numbered, timeout_answer, users
from tests.support.ports import refused_port
from tests.support.simulator import refresh_directly

START = at("2026-11-30T08:00:00")
LEASE = timedelta(seconds=15)
STAMP = START + timedelta(seconds=1)  # reload_timestamp: VICIdial took the lost call


@dataclass
class Database:
    """A stand-in for the clusters' databases: which servers' lost calls it settles, and
    what it was asked (server, the lost call's start)."""

    settles: set[str]
    asked: list[tuple[str, datetime]] = field(default_factory=list)

    def lost(self, server: str, started: datetime) -> Attempt | None:
        self.asked.append((server, started))
        if server not in self.settles:
            return None
        answer = Answer(Outcome.SETTLED, "taken since the lost call", reached=False)
        return Attempt(answer, started, 0, reload_timestamp=STAMP)


def _due(config: Config, name: str) -> datetime:
    found = next_fire(schedule_of(config, config.server(name)), START, None)
    assert found is not None
    return found.run.due


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def _dead_daemon_called(path: Path, clock: FakeClock, config: Config, *names: str) -> None:
    """A daemon that claimed these servers' runs and sent their calls, then was killed."""
    dead = ClaimStore(sqlite_engine(path, clock), "host:100", LEASE)
    dead.create()
    for name in names:
        claim = dead.claim(name, _due(config, name))
        assert claim is not None
        assert dead.calling(claim)


@pytest.fixture
def restarted(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Loop, Database]]:
    """The daemon started again on the state file (claims exclusive, as on SQLite), its
    lost calls asked of `Database`; the dead daemon's claims are made by the test."""
    database = Database(set())
    config = fleet([{**s, "every": "1h"} for s in numbered(2)])

    def claims(events: Events) -> Claiming:
        made = Claiming(
            sqlite_engine(tmp_path / "state.db", clock),
            "host:200",
            LEASE,
            clock=clock,
            events=events,
        )
        made.exclusive = True
        made.lost = database.lost
        return made

    loop = Loop(config, tmp_path / "state.db", clock, Vicidial(users()), claims=claims)
    try:
        yield loop, database
    finally:
        loop.close()


def test_a_lost_call_taken_since_its_start_is_settled_with_no_call(
    restarted: tuple[Loop, Database], clock: FakeClock, tmp_path: Path
) -> None:
    loop, database = restarted
    due = _due(loop.config, "s0")
    _dead_daemon_called(tmp_path / "state.db", clock, loop.config, "s0")
    database.settles = {"s0"}

    loop.run_for(timedelta(minutes=30))

    assert database.asked == [("s0", START)]  # the lost call's start, on this clock
    assert [c.server_ip for c in loop.refreshes()] == ["10.0.0.1"]  # s1 only: s0 settled
    (line,) = loop.log.matching("refresh.settled", server="s0")
    assert (line["due"], line["started"], line["reload_timestamp"]) == (due, START, STAMP)
    assert loop.runner.ledger.server("s0").last_done == due
    (row,) = loop.store.history(server="s0")
    assert (row.outcome, row.at) == (Outcome.SETTLED, START)
    assert loop.sample("refreshd_refresh_total", server="s0", outcome="settled") is None
    assert loop.runner.claims is not None
    assert loop.runner.claims.store.state("s0", due) == ("done", "host:200", 2)
    assert loop.log.matching("claim.taken_over", server="s0", maybe_called=True)


def test_a_lost_call_not_taken_is_called_again_once(
    restarted: tuple[Loop, Database], clock: FakeClock, tmp_path: Path
) -> None:
    loop, database = restarted
    _dead_daemon_called(tmp_path / "state.db", clock, loop.config, "s0")

    loop.run_for(timedelta(minutes=30))

    assert database.asked == [("s0", START)]
    assert sorted(c.server_ip for c in loop.refreshes()) == ["10.0.0.0", "10.0.0.1"]
    assert loop.log.matching("refresh.settled") == []
    assert len(loop.log.matching("refresh.succeeded", server="s0")) == 1


def test_a_call_that_was_never_sent_asks_no_database(
    restarted: tuple[Loop, Database], clock: FakeClock
) -> None:
    loop, database = restarted

    loop.run_for(timedelta(minutes=30))

    assert database.asked == []
    assert len(loop.refreshes()) == 2


def test_one_clusters_entries_are_settled_alike(
    restarted: tuple[Loop, Database], clock: FakeClock, tmp_path: Path
) -> None:
    loop, database = restarted
    loop.scheduler.clusters = CallGroups({"s0": "east", "s1": "east"})
    _dead_daemon_called(tmp_path / "state.db", clock, loop.config, "s0", "s1")
    database.settles = {"s0"}  # one reading proves the cluster's refresh: it serves both

    loop.run_for(timedelta(minutes=30))

    assert loop.refreshes() == []
    for name in ("s0", "s1"):
        assert loop.log.matching("refresh.settled", server=name)
        assert loop.runner.ledger.server(name).last_done == _due(loop.config, name)


# -- the reading itself, against a real MariaDB (verify/settling.py) ------------------------

DB_PASSWORD = "ro-pass-4567"
API_PASSWORD = "api-pass-123"


@pytest.fixture
def cluster() -> Iterator[tuple[Simulator, ClusterDatabase]]:
    """The simulator mirrored into a scratch MariaDB, and a read-only reader of it."""
    with verified_cluster(telephony_boxes(), DB_PASSWORD, users=[SimUser("api", API_PASSWORD)]) as (
        sim,
        url,
    ):
        reader = ClusterDatabase(url, DB_PASSWORD)
        try:
            yield sim, reader
        finally:
            reader.close()


def _refresh(sim: Simulator) -> None:
    refresh_directly(sim, "api", API_PASSWORD)


def test_a_refresh_taken_after_the_lost_call_started_settles_it(
    cluster: tuple[Simulator, ClusterDatabase],
) -> None:
    sim, reader = cluster
    started = system_clock.now() - timedelta(seconds=2)  # clear of the stamp's second
    _refresh(sim)

    settled = settle_lost(reader, system_clock, started)

    assert isinstance(settled, Attempt)
    assert settled.answer.outcome is Outcome.SETTLED
    assert settled.started_at == started
    assert settled.reload_timestamp is not None
    assert settled.reload_timestamp >= started.replace(microsecond=0)


@pytest.mark.parametrize("refreshed", [True, False])
def test_no_refresh_since_the_lost_call_started_calls_again(
    cluster: tuple[Simulator, ClusterDatabase], refreshed: bool
) -> None:
    sim, reader = cluster
    if refreshed:
        _refresh(sim)  # a refresh before the lost call: not the call's
    started = system_clock.now() + timedelta(seconds=2)

    settled = settle_lost(reader, system_clock, started)

    assert isinstance(settled, str)
    assert settled.startswith("no refresh taken since the call started")


def test_an_unreadable_database_calls_again_saying_why() -> None:
    with refused_port() as port:
        url = DatabaseUrl("nobody", "127.0.0.1", port, "asterisk")
        reader = ClusterDatabase(url, "secret-pass-1", timeout=1)
        try:
            settled = settle_lost(reader, system_clock, system_clock.now())
        finally:
            reader.close()

    assert isinstance(settled, str)
    assert settled.startswith("the database could not be read")
    assert "cannot read the database" in settled
    assert "secret-pass-1" not in settled


def test_a_retry_after_a_time_out_is_settled_when_the_php_ran(
    restarted: tuple[Loop, Database], clock: FakeClock
) -> None:
    loop, database = restarted
    loop.fault = lambda number: timeout_answer() if number == 0 else None
    loop.fault_after_login = True  # the PHP ran (the refresh taken), then the answer was lost
    database.settles = {"s0"}

    loop.run_for(timedelta(minutes=30))

    assert loop.log.matching("refresh.retrying", server="s0")
    (asked,) = database.asked  # at the retry only, of the timed-out call's start
    assert asked[0] == "s0"
    assert abs(asked[1] - loop.calls[0].at) < timedelta(milliseconds=1)  # kept to the ms
    assert len([c for c in loop.calls if c.server_ip == "10.0.0.0"]) == 1  # no second call
    assert loop.log.matching("refresh.settled", server="s0")
    assert loop.runner.ledger.server("s0").last_done == _due(loop.config, "s0")


_URL = DatabaseUrl("ro", "127.0.0.1", 3306, "asterisk")


@dataclass
class _SlowFirstReading:
    """A cluster's database whose first `slow` readings take `slowly` on the clock (the first
    opens the connection) and whose later ones are a query's round trip; the PHP stamped
    `stamp`."""

    clock: FakeClock
    stamp: datetime
    slowly: timedelta
    slow: int = 1
    readings: int = 0
    url = _URL

    def read(self) -> Reading:
        self.readings += 1
        took = self.slowly if self.readings <= self.slow else timedelta(milliseconds=2)
        self.clock.advance(took)
        # The database's clock is read at the end, once the connection is up; same host.
        return Reading((), (), self.stamp, database_now=self.clock.now())


def test_a_slow_first_reading_is_read_again_on_the_open_connection_before_calling_again() -> None:
    # A call started late in its second, stamped by the PHP in that same second: the first
    # reading's round trip (connection set-up) is too wide to tell, the second one settles it.
    started = at("2026-11-30T08:00:29.900")
    clock = FakeClock(started + timedelta(seconds=2))
    database = _SlowFirstReading(clock, started.replace(microsecond=0), timedelta(seconds=0.3))

    settled = settle_lost(database, clock, started)  # type: ignore[arg-type]

    assert isinstance(settled, Attempt), settled
    assert settled.answer.outcome is Outcome.SETTLED
    assert database.readings == 2


def test_a_stamp_that_stays_too_close_to_tell_calls_again_after_two_readings() -> None:
    # Both readings slow (a database far away): still too close, so the call is made again.
    started = at("2026-11-30T08:00:29.900")
    clock = FakeClock(started + timedelta(seconds=2))
    stamp = started.replace(microsecond=0)
    database = _SlowFirstReading(clock, stamp, timedelta(seconds=0.3), slow=5)

    settled = settle_lost(database, clock, started)  # type: ignore[arg-type]

    assert isinstance(settled, str)
    assert settled.startswith("too close to tell")
    assert database.readings == 2

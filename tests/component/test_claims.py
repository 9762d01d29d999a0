"""Claims with leases and fencing on the three engines: SQLite (one host, a FakeClock), and
the machine's real PostgreSQL and MariaDB (each test in a database of its own, leases measured
by the database's clock)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refreshd.clock import FakeClock
from refreshd.shared import Claim, ClaimStore, Engine, connect, sqlite_engine
from refreshd.shared.claims import SCHEMA
from tests.support.databases import REAL_LEASE, scratch_database
from tests.support.waiting import all_at_once, eventually

DUE = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
ENGINES = ["sqlite", "postgresql", "mysql"]
LEASE = REAL_LEASE


class Cluster:
    """Instances sharing one database."""

    def __init__(self, make_engine: Callable[[], Engine], clock: FakeClock | None) -> None:
        self._make_engine = make_engine
        self._clock = clock
        self.engines: list[Engine] = []

    @property
    def fake(self) -> bool:
        return self._clock is not None

    def now(self) -> datetime:
        """The instances' clock (the FakeClock on SQLite, the host's on a server)."""
        return self._clock.now() if self._clock is not None else datetime.now(UTC)

    def engine(self) -> Engine:
        engine = self._make_engine()
        self.engines.append(engine)
        return engine

    def instance(self, name: str, lease: timedelta = timedelta(seconds=30)) -> ClaimStore:
        engine = self.engine()
        store = ClaimStore(engine, name, lease)
        store.create()
        return store

    def pair(self) -> tuple[ClaimStore, ClaimStore]:
        """web-1 and web-2, whose claims each last LEASE unless renewed."""
        return self.instance("web-1", LEASE), self.instance("web-2", LEASE)

    def take_over(self, store: ClaimStore, server: str, lease: timedelta) -> Claim:
        """`store`'s claim on `server`'s run once `lease` has passed: at once on a FakeClock,
        else as soon as the database's clock says so."""
        taken: list[Claim] = []

        def claimed() -> bool:
            claim = store.claim(server, DUE, self.now())
            taken.extend([claim] if claim is not None else [])
            return bool(taken)

        if self._clock is not None:
            self._clock.advance(lease + timedelta(milliseconds=1))
            assert claimed()
        else:
            eventually(claimed, timeout=10, what="the lease to run out")
        return taken[0]


def called_claim(store: ClaimStore) -> Claim:
    """`store`'s claim on east's run, marked called (its call may have gone out)."""
    mine = store.claim("east", DUE)
    assert mine is not None
    assert store.calling(mine) is True
    return mine


@pytest.fixture(params=ENGINES)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    if request.param == "sqlite":
        clock = FakeClock(datetime(2026, 11, 30, 1, 0, tzinfo=UTC))
        each = Cluster(lambda: sqlite_engine(tmp_path / "shared.db", clock), clock)
        yield each
    else:
        with scratch_database(request.param) as url:
            each = Cluster(lambda: connect(url, None), None)
            yield each
    for engine in each.engines:
        engine.close()


def test_eight_instances_racing_for_thirty_runs_give_each_run_one_claim(cluster: Cluster) -> None:
    instances = [cluster.instance(f"web-{n}") for n in range(8)]
    won: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    def race(n: int) -> None:
        store = instances[n]
        for server in range(10):
            for run in range(3):
                if store.claim(f"s{server}", DUE + timedelta(minutes=run)) is not None:
                    with lock:
                        won[(f"s{server}", run)] += 1

    all_at_once(race, len(instances), timeout=60)
    assert len(won) == 30
    assert set(won.values()) == {1}


def test_a_lapsed_claim_is_taken_over_and_its_holder_fenced_out(cluster: Cluster) -> None:
    first, second = cluster.pair()
    mine = first.claim("east", DUE)
    assert mine == Claim("east", DUE, "web-1", 1)
    assert second.claim("east", DUE) is None  # a live lease

    theirs = cluster.take_over(second, "east", LEASE)
    assert (theirs.fence, theirs.taken_over_from, theirs.maybe_called) == (2, "web-1", False)

    assert first.calling(mine) is False  # stalled past its lease: it must not call
    assert first.finish(mine, "ok") is False  # and its late result is refused
    assert second.calling(theirs) is True
    assert second.finish(theirs, "ok") is True
    assert second.state("east", DUE) == ("done", "web-2", 2)
    assert first.claim("east", DUE) is None  # done: nobody calls again


def test_a_claim_whose_call_may_have_gone_out_is_taken_over_as_maybe_called(
    cluster: Cluster,
) -> None:
    first, second = cluster.pair()
    called_claim(first)
    assert cluster.take_over(second, "east", LEASE).maybe_called is True  # at-least-once


def test_renewal_keeps_a_claim_and_release_gives_it_back_at_once(cluster: Cluster) -> None:
    first, second = cluster.instance("web-1"), cluster.instance("web-2")
    mine = first.claim("east", DUE)
    assert mine is not None
    assert first.renew([mine]) == [mine]
    assert second.claim("east", DUE) is None
    first.release(mine)
    assert first.renew([mine]) == []  # released: no longer held
    theirs = second.claim("east", DUE)
    assert theirs is not None
    assert theirs.fence == 2


def test_a_result_other_than_ok_leaves_the_run_open_for_a_retry(cluster: Cluster) -> None:
    first = cluster.instance("web-1")
    mine = first.claim("east", DUE)
    assert mine is not None
    assert first.finish(mine, "transient") is True
    again = first.claim("east", DUE)  # its own claim: the retry may go at once
    assert again is not None
    assert (again.fence, again.taken_over_from) == (2, None)
    assert first.finish(again, "ok") is True
    assert first.claim("east", DUE) is None


def test_a_claim_taken_over_from_a_called_one_may_call_and_finish(cluster: Cluster) -> None:
    # The taken-over row is `called` already: marking it `called` again changes no value,
    # which MariaDB's row count reports as 0 rows. The instance that took it over must
    # still be allowed to call, and its result must still count.
    old, new = cluster.pair()
    called_claim(old)
    taken = cluster.take_over(new, "east", LEASE)
    assert taken.maybe_called
    assert new.calling(taken)
    assert new.finish(taken, "ok")
    assert new.state("east", DUE) == ("done", "web-2", taken.fence)


def test_a_takeover_of_a_called_claim_says_when_the_call_started_on_its_clock(
    cluster: Cluster,
) -> None:
    first, second = cluster.pair()
    mine = first.claim("east", DUE)
    assert mine is not None
    before = cluster.now()
    assert first.calling(mine) is True
    after = cluster.now()

    theirs = cluster.take_over(second, "east", LEASE)

    assert theirs.maybe_called
    assert theirs.called_at is not None
    # Its age by the database's clock, dated on the taker's: exact on one clock, within the
    # database's milliseconds on a server (the same host's clock here).
    slack = timedelta(0) if cluster.fake else timedelta(milliseconds=50)
    assert before - slack <= theirs.called_at <= after + slack


def test_a_claim_never_called_carries_no_call_start(cluster: Cluster) -> None:
    first, second = cluster.pair()
    assert first.claim("east", DUE) is not None
    theirs = cluster.take_over(second, "east", LEASE)
    assert (theirs.maybe_called, theirs.called_at) == (False, None)


def test_a_claims_table_from_before_the_call_start_gains_its_column(cluster: Cluster) -> None:
    old = ClaimStore(cluster.engine(), "web-1", timedelta(seconds=30))
    with old.engine.transaction() as tx:
        tx.execute(SCHEMA.replace("    called_at BIGINT,\n", ""))
    mine = old.claim("east", DUE)  # a claim made by the older refreshd
    assert mine is not None

    store = cluster.instance("web-1")  # create() adds the column; a second time is a no-op
    store.create()

    assert store.calling(mine) is True
    assert store.state("east", DUE) == ("called", "web-1", 1)


def test_renewals_in_the_same_millisecond_keep_the_claim(cluster: Cluster) -> None:
    """A renewal right after the claim (or another renewal) may fall in the same
    millisecond of the database's clock: its lease is then set to the value it has, which
    MariaDB counts as 0 rows changed. The claim is still held: not lost, not refused."""
    first = cluster.instance("web-1")
    mine = first.claim("east", DUE)
    assert mine is not None
    for _ in range(200):  # back to back: many fall in one millisecond
        assert first.renew([mine]) == [mine]

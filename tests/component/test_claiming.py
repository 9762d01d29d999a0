"""An instance's claims kept alive (refreshd/claiming.py): takeovers said and counted, the
instances visible with what each holds, and the shared store's outages: no claim (so no call)
while it is unreachable, said once, retried with back-off, /healthz's answer after a lease,
recovery without a restart. On a FakeClock where the lease is measured by it (SQLite), and
on the machine's PostgreSQL cut and restored through a TCP proxy."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from refreshd.claiming import schedule_fingerprint
from refreshd.clock import FakeClock, system_clock
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.dburl import DatabaseUrl
from refreshd.runner import Runner
from refreshd.shared import connect, instances, sqlite_engine
from refreshd.store import StateStore
from refreshd.tickets import FENCED_OUT, Refused, Ticket, claim_run
from tests.support.databases import REAL_LEASE, scratch_database
from tests.support.instances import ENGINES, Breakable, One, claims_engine
from tests.support.loop import Log, at, fleet, numbered
from tests.support.proxy import tcp_proxy
from tests.support.waiting import eventually

START = at("2027-01-04T00:00:00")
LEASE = timedelta(seconds=15)


@pytest.mark.parametrize("kind", ENGINES)
def test_a_takeover_is_said_with_its_old_holder_and_counted_at_least_once(
    kind: str, tmp_path: Path
) -> None:
    clock = FakeClock(START)
    lease = LEASE if kind == "sqlite" else REAL_LEASE
    with claims_engine(kind, tmp_path) as engine:
        old, new = (
            One(engine(clock), "web-1", clock, lease),
            One(engine(clock), "web-2", clock, lease),
        )
        claim = old.claims.take("east", START)
        assert not isinstance(claim, Refused)
        assert old.claims.calling(claim)
        assert new.claims.take("east", START) is Refused.HELD
        if kind == "sqlite":
            clock.advance(lease)
            taken = new.claims.take("east", START)
        else:
            found: list[object] = []
            eventually(
                lambda: (
                    found.append(new.claims.take("east", START)) or found[-1] is not Refused.HELD
                ),
                timeout=10,
                what="the lease to lapse by the database's clock",
            )
            taken = found[-1]  # type: ignore[assignment]
        assert not isinstance(taken, Refused)
        assert (taken.taken_over_from, taken.maybe_called) == ("web-1", True)
        (said,) = new.log.matching("claim.taken_over")
        assert (said["from_instance"], said["maybe_called"], said["server"]) == (
            "web-1",
            True,
            "east",
        )
        assert new.sample("refreshd_claims_taken_over_total", maybe_called="true") == 1
        # The old holder's result is refused and said so.
        assert old.claims.finish(claim, "ok") is False
        assert old.log.matching("claim.lost", server="east")
        assert old.sample("refreshd_claims_lost_total") == 1
        assert new.claims.finish(taken, "ok") is True
        assert old.claims.take("east", START) is Refused.DONE


def test_live_instances_are_listed_with_the_runs_each_holds(tmp_path: Path) -> None:
    clock = FakeClock(START)
    state = tmp_path / "state.db"
    web1 = One(sqlite_engine(state, clock), "web-1", clock, LEASE)
    web2 = One(sqlite_engine(state, clock), "web-2", clock, LEASE)
    gone = One(sqlite_engine(state, clock), "web-3", clock, LEASE)
    gone.claims.renew()
    clock.advance(LEASE)  # web-3's heartbeat is a lease old: no longer live
    held = web1.claims.take("east", START)
    assert not isinstance(held, Refused)
    assert web1.claims.renew() is not None
    live = web2.claims.renew()

    assert live is not None
    assert [each.name for each in live] == ["web-1", "web-2"]
    assert live[0].holds == (("east", START),)
    assert live[1].holds == ()
    assert live[0].last_beat == START + LEASE  # by the store's clock
    # What `status` reads from the state file, read-only.
    readonly = sqlite_engine(state, clock, readonly=True)
    assert instances.live(readonly, int(LEASE.total_seconds() * 1000)) == live
    assert web2.sample("refreshd_instance_up", instance="web-1") == 1
    assert web2.sample("refreshd_instance_up", instance="web-2") == 1
    assert web2.sample("refreshd_instance_up", instance="web-3") is None


def test_an_unreachable_store_stops_claims_is_said_once_and_recovers(tmp_path: Path) -> None:
    clock = FakeClock(START)
    engine = Breakable(sqlite_engine(tmp_path / "state.db", clock))
    one = One(engine, "web-1", clock, LEASE)
    assert one.claims.renew() is not None
    engine.broken = True

    delays, start = [], clock.monotonic()
    while clock.monotonic() - start < 60:
        assert one.claims.renew() is None
        assert one.claims.take("east", START) is Refused.UNAVAILABLE  # no claim, no call
        delays.append(one.claims.delay())
        clock.advance(timedelta(seconds=delays[-1]))
    assert delays[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0]  # back-off, up to a lease
    assert set(delays[5:]) == {15.0}
    (said,) = one.log.matching("state.error")  # once per outage
    assert said["error"].startswith("claims in the shared store: OperationalError: ")
    assert "retrying with back-off, no call starts meanwhile" in said["error"]
    assert not one.claims.healthy()  # /healthz: 503

    engine.broken = False
    assert one.claims.renew() is not None
    (back,) = one.log.matching("state.recovered")
    assert back["outage_s"] >= 60
    assert one.claims.healthy()
    assert one.claims.delay() == 5.0
    assert not isinstance(one.claims.take("east", START), Refused)
    engine.broken = True
    one.claims.renew()
    assert len(one.log.matching("state.error")) == 2  # a new outage is said again


def test_a_state_files_only_daemon_takes_a_dead_ones_claims_over_at_once(
    tmp_path: Path,
) -> None:
    clock = FakeClock(START)
    dead = One(sqlite_engine(tmp_path / "state.db", clock), "host:100", clock, LEASE)
    claim = dead.claims.take("east", START)
    assert not isinstance(claim, Refused)
    assert dead.claims.calling(claim)  # then kill -9
    restarted = One(sqlite_engine(tmp_path / "state.db", clock), "host:200", clock, LEASE)
    restarted.claims.exclusive = True  # the state file's lock is held: host:100 is dead

    taken = restarted.claims.take("east", START)

    assert not isinstance(taken, Refused)
    assert (taken.taken_over_from, taken.maybe_called) == ("host:100", True)
    assert restarted.log.matching("claim.taken_over", from_instance="host:100")


def test_a_claims_outage_is_not_ended_by_the_journal_answering(tmp_path: Path) -> None:
    """Only the claims fail (another live instance under this name, a lock on the claims
    table): the journal's writes and the daemon's heartbeat still answer. The outage is
    said once and recovered once, when the claims answer, not flapped at each heartbeat."""
    clock = FakeClock(START)
    engine = Breakable(sqlite_engine(tmp_path / "state.db", clock))
    one = One(engine, "web-1", clock, LEASE)
    engine.broken = True
    for _ in range(3):
        assert one.claims.renew() is None
        one.events.store_answered()  # the journal's write or heartbeat, at the same time
        clock.advance(timedelta(seconds=one.claims.delay()))
    assert len(one.log.matching("state.error")) == 1
    assert one.log.matching("state.recovered") == []
    engine.broken = False
    assert one.claims.renew() is not None
    assert len(one.log.matching("state.recovered")) == 1
    # A whole outage (the journal failing too) is still said once and recovered once.
    engine.broken = True
    one.events.store_failed("journal: unreachable")
    assert one.claims.renew() is None
    engine.broken = False
    one.events.store_answered()
    assert len(one.log.matching("state.recovered")) == 1  # the claims still fail
    assert one.claims.renew() is not None
    assert len(one.log.matching("state.error")) == 2
    assert len(one.log.matching("state.recovered")) == 2


def test_instances_whose_schedules_differ_are_told_once_each_change(tmp_path: Path) -> None:
    """Two instances whose configs plan different runs (`every`, windows, spread: a copied
    config edited on one host, a SIGHUP sent to one only): their runs have different due
    instants, so no claim ever collides and the fleet refreshes the union of both
    schedules. Each instance says so, naming the others, once per change."""
    clock = FakeClock(START)
    state = tmp_path / "state.db"
    web1 = One(sqlite_engine(state, clock), "web-1", clock, LEASE)
    web2 = One(sqlite_engine(state, clock), "web-2", clock, LEASE)
    web1.claims.schedule = schedule_fingerprint(fleet(numbered(2)))
    web2.claims.schedule = schedule_fingerprint(fleet(numbered(2)))
    assert web1.claims.renew() is not None
    assert web2.claims.renew() is not None
    assert web2.log.matching("instances.schedules_differ") == []

    web2.claims.schedule = schedule_fingerprint(
        fleet([{**server, "every": "15m"} for server in numbered(2)])
    )
    for _ in range(3):
        assert web2.claims.renew() is not None
        assert web1.claims.renew() is not None
    (said,) = web2.log.matching("instances.schedules_differ")
    assert said["others"] == ["web-1"]
    (said,) = web1.log.matching("instances.schedules_differ")
    assert said["others"] == ["web-2"]

    web2.claims.schedule = web1.claims.schedule  # the other host reloaded too
    assert web2.claims.renew() is not None
    assert web1.claims.renew() is not None
    assert web1.log.matching("instances.schedules_agree")
    assert len(web1.log.matching("instances.schedules_differ")) == 1


def test_a_state_files_only_daemon_compares_no_schedule_with_a_dead_ones(
    tmp_path: Path,
) -> None:
    """A daemon restarted on its state file with a new config: the previous process's row
    is less than a lease old, but that process is dead (the file's lock): no warning."""
    clock = FakeClock(START)
    state = tmp_path / "state.db"
    dead = One(sqlite_engine(state, clock), "host:100", clock, LEASE)
    dead.claims.schedule = "before"
    assert dead.claims.renew() is not None
    restarted = One(sqlite_engine(state, clock), "host:200", clock, LEASE)
    restarted.claims.exclusive = True
    restarted.claims.schedule = "after"
    assert restarted.claims.renew() is not None
    assert restarted.log.matching("instances.schedules_differ") == []


def test_a_run_given_back_until_later_binds_the_others_for_that_long_whatever_the_skew(
    tmp_path: Path,
) -> None:
    """A run given back until its retry (a back-off) is held for that long by the store's
    clock: an instance whose clock runs an hour ahead must neither hold it from the others
    for an hour more (its death would cost the run that hour) nor, an hour behind, free it
    at once (the others would retry at once, the back-off ignored)."""
    for skew in (timedelta(hours=1), -timedelta(hours=1)):
        store_clock = FakeClock(START)
        local = FakeClock(START + skew)
        state = tmp_path / f"state-{skew.total_seconds():.0f}.db"
        skewed = One(sqlite_engine(state, store_clock), "web-1", local, LEASE)
        other = One(sqlite_engine(state, store_clock), "web-2", store_clock, LEASE)
        claim = skewed.claims.take("east", START)
        assert not isinstance(claim, Refused)
        skewed.claims.give_back(claim, until=local.now() + timedelta(seconds=30))

        store_clock.advance(timedelta(seconds=29))
        assert other.claims.take("east", START) is Refused.HELD, skew  # the back-off binds
        store_clock.advance(timedelta(seconds=2))
        assert not isinstance(other.claims.take("east", START), Refused), skew


def test_claims_older_than_the_history_are_forgotten_at_a_renewal(tmp_path: Path) -> None:
    clock = FakeClock(START)
    one = One(sqlite_engine(tmp_path / "state.db", clock), "web-1", clock, LEASE)
    one.claims.retention = timedelta(days=30)
    old = one.claims.take("east", START)
    assert not isinstance(old, Refused)
    one.claims.finish(old, "ok")
    assert one.claims.hold_login("refreshd") is None
    clock.advance(timedelta(days=31))
    recent = one.claims.take("east", clock.now())
    assert not isinstance(recent, Refused)

    assert one.claims.renew() is not None

    assert one.claims.store.state("east", START) is None  # forgotten
    assert one.claims.store.state("east", recent.due) is not None
    assert one.claims.store.state("login/refreshd", at("1970-01-01T00:00:00")) is not None


def test_health_fails_only_after_a_lease_without_a_renewal(tmp_path: Path) -> None:
    clock = FakeClock(START)
    engine = Breakable(sqlite_engine(tmp_path / "state.db", clock))
    one = One(engine, "web-1", clock, LEASE)
    assert one.claims.renew() is not None
    engine.broken = True
    clock.advance(LEASE - timedelta(seconds=1))
    assert one.claims.renew() is None
    assert one.claims.healthy()
    clock.advance(timedelta(seconds=2))
    assert not one.claims.healthy()


@pytest.fixture
def postgresql() -> Iterator[DatabaseUrl]:
    with scratch_database("postgresql") as url:
        yield url


def test_postgresql_cut_and_restored_no_claim_meanwhile_and_recovery(
    postgresql: DatabaseUrl,
) -> None:
    lease = timedelta(seconds=1)
    with tcp_proxy(postgresql.port) as proxy:
        url = DatabaseUrl(
            postgresql.user, "127.0.0.1", proxy.port, postgresql.database, "postgresql"
        )
        one = One(connect(url, None, timeout=2), "web-1", system_clock, lease)
        try:
            assert one.claims.renew() is not None
            assert not isinstance(one.claims.take("east", START), Refused)

            proxy.cut()
            assert one.claims.renew() is None
            assert one.claims.take("west", START) is Refused.UNAVAILABLE
            eventually(lambda: not one.claims.healthy(), timeout=5, what="/healthz to fail")
            assert one.claims.renew() is None
            assert len(one.log.matching("state.error")) == 1

            proxy.restore()
            eventually(lambda: one.claims.renew() is not None, timeout=10, what="recovery")
            assert one.claims.healthy()
            assert len(one.log.matching("state.recovered")) == 1
            assert not isinstance(one.claims.take("west", START), Refused)
        finally:
            one.claims.engine.close()


def test_a_run_taken_over_after_the_early_look_is_refused_inside_the_journal_write(
    tmp_path: Path,
) -> None:
    # The fence is looked at first (Ticket.holds), then the result is written with the
    # claim's end in one transaction. A takeover between the two must undo the whole write:
    # no history row, no done run, the ledger as before; the result is not the run's.
    clock = FakeClock(START)
    config = fleet([{"name": "east", "windows": ["00:00-01:00"]}])
    store = StateStore(tmp_path / "state.db")
    log = Log()
    runner = Runner(config, store=store, clock=clock, log=log)
    runner.configure(config, [], changed_logins=[])
    mine = One(sqlite_engine(tmp_path / "state.db", clock), "web-1", clock, LEASE)
    other = One(sqlite_engine(tmp_path / "state.db", clock), "web-2", clock, LEASE)
    ticket = Ticket("east", START, mine.claims)
    assert claim_run(ticket) is None  # claimed and marked called: the request goes out
    clock.advance(LEASE)
    assert not isinstance(other.claims.take("east", START), Refused)  # taken over

    class LateLook(Ticket):
        def holds(self, outcome: object) -> bool:  # the early look saw it still held
            return True

    late = LateLook("east", START, mine.claims, claim=ticket.claim)
    call = runner.call_for(config.servers[0], attempt=1, due=START)
    ok = Attempt(Answer(Outcome.OK, "SUCCESS: server_refresh", 200, 3), clock.now(), 20)
    assert runner.settle(call, ok, late) is FENCED_OUT
    assert late.refused is Refused.FENCED
    assert store.history(server="east") == []
    assert store.last_runs_done() == {}
    assert runner.ledger.server("east").last_done is None
    assert mine.log.matching("claim.lost", server="east")
    store.close()


def test_an_answer_is_decided_on_what_other_instances_journaled_not_on_a_stale_ledger(
    tmp_path: Path,
) -> None:
    # web-1 meets a refused login: a credentials wait, journaled. web-2 has not synced yet
    # (its heartbeat is seconds away) when its own call on the same login ends unreadable:
    # deciding on its stale ledger would write the login back without the wait, and the
    # fleet would try the refused password again at once.
    clock = FakeClock(START)
    config = fleet(
        [{"name": "east", "windows": ["00:00-01:00"]}, {"name": "west", "windows": ["00:00-01:00"]}]
    )
    first, second = StateStore(tmp_path / "state.db"), StateStore(tmp_path / "state.db")
    web1 = Runner(config, store=first, clock=clock, log=Log())
    web2 = Runner(config, store=second, clock=clock, log=Log())
    for runner in (web1, web2):
        runner.configure(config, [], changed_logins=[])
    refused = Attempt(Answer(Outcome.AUTH_FAILED, "ERROR: Login incorrect", 200), START, 20)
    web1.settle(web1.call_for(config.servers[0], attempt=1, due=START), refused)
    lost = Attempt(Answer(Outcome.TRANSIENT, "no answer", None), START, 2000)
    web2.settle(web2.call_for(config.servers[1], attempt=1, due=START), lost)
    with StateStore(tmp_path / "state.db") as store:
        (login,) = store.load().logins.values()
    assert login.wait_until is not None  # the refused login's wait holds for the fleet
    assert web2.ledger.login(next(iter(web2.ledger.logins))).wait_until == login.wait_until
    first.close()
    second.close()


@pytest.mark.parametrize("kind", ENGINES)
def test_a_second_live_daemon_with_the_same_instance_name_gets_no_claim_and_says_why(
    kind: str, tmp_path: Path
) -> None:
    """Two daemons configured with one `[state].instance` (a copied config): the second
    must not take the first's live claim over as if it were its own (its call in flight
    would be made twice); it claims nothing, says why, and starts once the first is gone."""
    clock = FakeClock(START)
    lease = LEASE if kind == "sqlite" else REAL_LEASE
    with claims_engine(kind, tmp_path) as engine:
        first = One(engine(clock), "web-1", clock, lease)
        twin = One(engine(clock), "web-1", clock, lease)
        twin.claims.pid = first.claims.pid + 1  # another process, same host, same name
        try:
            assert first.claims.renew() is not None
            claim = first.claims.take("east", START)
            assert not isinstance(claim, Refused)
            assert first.claims.calling(claim)  # the request is out

            assert twin.claims.take("east", START) is Refused.UNAVAILABLE
            assert twin.claims.renew() is None
            (said,) = twin.log.matching("state.error")
            assert "another live instance is named 'web-1'" in said["error"]
            assert f"pid {first.claims.pid}" in said["error"]
            assert first.claims.finish(claim, "ok") is True  # the first's fence held
            assert first.claims.renew() is not None  # the first keeps working

            # The first stopped (its heartbeat a lease old): the twin starts.
            if kind == "sqlite":
                clock.advance(lease)
            eventually(
                lambda: twin.claims.renew() is not None,
                timeout=10,
                what="the twin to start once the first's heartbeat is a lease old",
            )
            assert not isinstance(twin.claims.take("west", START), Refused)
        finally:
            first.claims.engine.close()
            twin.claims.engine.close()


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_lock_held_by_another_client_on_the_claims_fails_a_renewal_in_bounded_time(
    kind: str,
) -> None:
    """Another client (a DBA's open transaction, a backup) holds a lock on the claims
    table: the renewal must fail within the store's time-out, said, rather than wait (and
    hold the engine, so every worker's claim waits behind it) until the lock goes."""
    import threading

    from tests.support.databases import admin_connection

    with scratch_database(kind) as url:
        one = One(connect(url, None, timeout=1), "web-1", system_clock, timedelta(seconds=5))
        held = one.claims.take("east", START)
        assert not isinstance(held, Refused)
        with admin_connection(kind, url.database) as locker:
            locker.cursor().execute(
                "LOCK TABLE refreshd_claims IN ACCESS EXCLUSIVE MODE"
                if kind == "postgresql"
                else "LOCK TABLES refreshd_claims WRITE"
            )
            answers: list[object] = []
            renewal = threading.Thread(target=lambda: answers.append(one.claims.renew()))
            renewal.start()
            renewal.join(8)  # the time-out is 1 s; the test never waits on the lock
            blocked = renewal.is_alive()
            locker.rollback()
        renewal.join(10)
        one.claims.engine.close()
    assert not blocked, "the renewal waited on another client's lock"
    assert answers == [None]
    (said,) = one.log.matching("state.error")
    assert "claims in the shared store" in said["error"]


def test_postgresql_that_hangs_mid_statement_fails_the_renewal_in_bounded_time_and_recovers(
    postgresql: DatabaseUrl,
) -> None:
    """The connection stays open but no answer comes (a hung peer or middlebox: TCP still
    acknowledges, so keepalives see nothing wrong, and psycopg has no read time-out): the
    renewal fails after about the store's time-out, said, instead of waiting for ever
    with the engine (every claim) held; then it recovers without a restart."""
    import threading

    lease = timedelta(seconds=3)
    with tcp_proxy(postgresql.port) as proxy:
        url = DatabaseUrl(
            postgresql.user, "127.0.0.1", proxy.port, postgresql.database, "postgresql"
        )
        one = One(connect(url, None, timeout=1), "web-1", system_clock, lease)
        try:
            assert one.claims.renew() is not None
            proxy.stall()
            answers: list[object] = []
            renewal = threading.Thread(target=lambda: answers.append(one.claims.renew()))
            renewal.start()
            renewal.join(8)  # the time-out is 1 s
            hung = renewal.is_alive()
            proxy.restore()
            renewal.join(30)
            assert not hung, "the renewal waited for ever on a connection that answers nothing"
            assert answers == [None]
            (said,) = one.log.matching("state.error")
            assert "claims in the shared store: OperationalError" in said["error"]
            eventually(lambda: one.claims.renew() is not None, timeout=10, what="recovery")
            assert not isinstance(one.claims.take("east", START), Refused)
        finally:
            proxy.restore()
            one.claims.engine.close()


@pytest.mark.parametrize("kind", ENGINES)
def test_a_run_passed_by_while_held_is_said_abandoned_unless_its_holder_finished_it(
    kind: str, tmp_path: Path
) -> None:
    clock = FakeClock(START)
    with claims_engine(kind, tmp_path) as engine:
        holder, other = (
            One(engine(clock), "web-1", clock, LEASE),
            One(engine(clock), "web-2", clock, LEASE),
        )
        called, finished = holder.claims.take("east", START), holder.claims.take("west", START)
        assert not isinstance(called, Refused)
        assert not isinstance(finished, Refused)
        assert holder.claims.calling(called)
        assert holder.claims.calling(finished)
        assert holder.claims.finish(finished, "ok")
        # The next run's ticket carries the run passed by: read once, on the worker.
        for server in ("east", "west"):
            ticket = Ticket(server, START + LEASE, other.claims, abandoned=START)
            assert claim_run(ticket) is None
            assert ticket.abandoned is None
    (said,) = other.log.matching("claim.abandoned")
    assert {k: said[k] for k in ("server", "due", "holder", "state", "maybe_called")} == {
        "server": "east",
        "due": START,
        "holder": "web-1",
        "state": "called",
        "maybe_called": True,
    }
    assert other.sample("refreshd_claims_abandoned_total", maybe_called="true") == 1

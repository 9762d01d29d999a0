"""Several instances on one claims store (issue 13): in-process schedulers and runners, each
its own ledger, on a FakeClock, claims on a SQLite state file or the machine's PostgreSQL and
MariaDB. Each run called once; a dead instance's run taken over after its lease; a stalled
instance starts no call on a lost claim and its late result is refused; a wrong password
costs one failed login whatever the number of instances."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from refreshd.claiming import Claiming
from refreshd.clock import FakeClock
from refreshd.core.vicidial import Answer
from refreshd.shared import Engine, sqlite_engine
from refreshd.simulator.rules import Vicidial
from refreshd.store import StateStore
from refreshd.tickets import Refused
from tests.support.instances import ENGINES, Breakable, Instances, claims_engine
from tests.support.loop import USER, at, fleet, http_error, numbered, users

START = at("2027-01-04T00:00:00")
MINUTE = timedelta(minutes=1)
# Long on the databases' real clocks: nothing lapses while a fake hour passes in a second.
LEASE = timedelta(seconds=30)


def every_ten_minutes(count: int) -> list[dict[str, object]]:
    return [{**server, "every": "10m"} for server in numbered(count)]


@pytest.fixture(params=ENGINES)
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def three(engine_kind: str, tmp_path: Path) -> Iterator[Instances]:
    config = fleet(every_ten_minutes(10))
    with claims_engine(engine_kind, tmp_path) as engine:
        # On SQLite the claims live in the state file the instances share; on a database
        # server the journal lives there too.
        fleet_ = Instances(
            config,
            tmp_path,
            count=3,
            start=START,
            engine=engine,
            lease=LEASE,
            shared_state=engine_kind == "sqlite",
        )
        try:
            yield fleet_
        finally:
            fleet_.close()


def test_three_instances_call_each_run_once_and_share_the_work(three: Instances) -> None:
    three.run_for(40 * MINUTE - MINUTE)

    per_run = three.calls_per_run()
    assert len(per_run) == 10 * 4  # every run of every server, each at its instant
    assert set(per_run.values()) == {1}
    # Not asserted here: that every instance did some of the work. On a fake clock every
    # instance wakes at the same instant, and one whose login is proven reaches each claim
    # before the others, which first queue for the login's lease: on a database server one
    # instance then does every run. Real daemons wake apart, and share it
    # (tests/process/test_instances.py measures the shares).
    assert three.vicidial.tally.logins["failed"] == 0


def test_a_dead_instances_run_is_taken_over_after_its_lease_and_counted(tmp_path: Path) -> None:
    config = fleet(every_ten_minutes(1))
    lease = timedelta(seconds=15)
    with claims_engine("sqlite", tmp_path) as engine:
        pair = Instances(config, tmp_path, count=2, start=START, engine=engine, lease=lease)
        try:
            # web-0 claimed the first run and marked the call as sent, then died.
            pair.dies_calling("web-0", "s0", START)

            pair.run_for(lease + 2 * lease / 3)
        finally:
            pair.close()
    survivor = pair.loops["web-1"]
    (taken,) = survivor.log.matching("claim.taken_over")
    assert (taken["server"], taken["from_instance"], taken["maybe_called"]) == (
        "s0",
        "web-0",
        True,
    )
    (call,) = survivor.calls
    assert START + lease <= call.at <= START + lease + lease / 3
    assert survivor.sample("refreshd_claims_taken_over_total", maybe_called="true") == 1
    assert survivor.runner.ledger.server("s0").last_done == START


def test_a_stalled_instance_starts_no_call_on_a_lost_claim_and_its_late_result_is_refused(
    tmp_path: Path,
) -> None:
    config = fleet(every_ten_minutes(1))
    lease = timedelta(seconds=15)
    stalled, resume = threading.Event(), threading.Event()

    def freeze() -> None:
        stalled.set()
        assert resume.wait(10)

    with claims_engine("sqlite", tmp_path) as engine:
        pair = Instances(config, tmp_path, count=2, start=START, engine=engine, lease=lease)
        try:
            slow, other = pair.loops["web-0"], pair.loops["web-1"]
            # web-0 claims the next run early, then its call goes out and it stops (SIGSTOP).
            early = pair.claims("web-0").take("s0", START + 10 * MINUTE)
            assert not isinstance(early, Refused)
            slow.hold = freeze
            slow.scheduler.run_due()
            assert stalled.wait(10)
            pair.stalled.add("web-0")
            # Three leases without a renewal: web-1 takes the run over and calls it.
            pair.run_for(3 * lease)
            assert len(other.calls) == 1
            # The claim web-0 took before the stall may be another's by now: no call on it.
            assert pair.claims("web-0").calling(early) is False
            slow.hold = None
            resume.set()  # SIGCONT: its answer comes back, too late
            assert slow.scheduler.dispatcher.wait_idle(10)
        finally:
            pair.close()
    assert slow.log.matching("claim.lost", server="s0", due=START)
    # Its result was not recorded: the run's one history row is web-1's (web-0 then took it
    # in from the store, as it takes in every other instance's writes before deciding).
    with StateStore(tmp_path / "state.db") as store:
        rows = [row for row in store.history(server="s0") if row.due == START]
    assert len(rows) == 1
    assert other.runner.ledger.server("s0").last_done == START
    assert slow.log.matching("claim.lost", server="s0", due=START + 10 * MINUTE)
    assert slow.sample("refreshd_claims_lost_total") == 2


@pytest.mark.parametrize("kind", ENGINES)
def test_ten_instances_with_a_wrong_password_cost_one_failed_login(
    kind: str, tmp_path: Path
) -> None:
    # Ten instances sharing the journal (a state file), claims on `kind`, every server due
    # at once: each instance may believe the login untried; one, and only one, tries it.
    vicidial = Vicidial(users())
    config = fleet(
        every_ten_minutes(5),
        credentials={"main": {"user": USER, "password": "wrong-password"}},
        backoff={"auth_retry": "1h"},
    )
    with claims_engine(kind, tmp_path) as engine:
        # Its calls are instants of the fake clock: no lease needs renewing meanwhile.
        ten = Instances(
            config,
            tmp_path,
            count=10,
            start=START,
            engine=engine,
            lease=LEASE,
            vicidial=vicidial,
            renew_every=5 * MINUTE,
        )
        try:
            ten.run_for(25 * MINUTE)
        finally:
            ten.close()
    assert vicidial.tally.logins["failed"] == 1
    assert sum(len(loop.calls) for loop in ten.loops.values()) == 1
    assert vicidial.lockouts == []


def test_a_failed_runs_retry_waits_for_its_back_off_on_every_instance(tmp_path: Path) -> None:
    config = fleet(every_ten_minutes(1), backoff={"retry_initial": "2m"})
    failures = iter([http_error(500)])

    def first_fails(number: int) -> Answer | None:
        return next(failures, None)

    with claims_engine("sqlite", tmp_path) as engine:
        # Seeded: the retry's jitter puts it 101 s after the failure, past a look-again.
        pair = Instances(config, tmp_path, count=2, start=START, engine=engine, lease=LEASE, seed=0)
        try:
            for loop in pair.loops.values():
                loop.fault = first_fails
            pair.run_for(5 * MINUTE)
        finally:
            pair.close()
    calls = sorted(call.at for loop in pair.loops.values() for call in loop.calls)
    (retrying,) = [
        line for loop in pair.loops.values() for line in loop.log.matching("refresh.retrying")
    ]
    # The other instance did not call meanwhile: the run was given back from the retry's
    # instant on, not at once.
    assert calls == [START, retrying["retry_at"]]
    assert retrying["retry_at"] > START + LEASE


def test_no_call_starts_while_the_claims_store_is_down_and_calls_resume_after(
    tmp_path: Path,
) -> None:
    servers = [{**server, "every": "1m"} for server in numbered(3)]
    engines: list[Breakable] = []

    def breakable(clock: FakeClock) -> Engine:
        engines.append(Breakable(sqlite_engine(tmp_path / "state.db", clock)))
        return engines[-1]

    one = Instances(fleet(servers), tmp_path, count=1, start=START, engine=breakable, lease=LEASE)
    loop = one.loops["web-0"]
    try:
        one.run_for(3 * MINUTE)
        before = len(loop.calls)
        engines[0].broken = True
        one.run_for(10 * MINUTE)
        during = len(loop.calls) - before
        engines[0].broken = False
        one.run_for(3 * MINUTE)  # recovers at the next renewal: no restart
    finally:
        one.close()
    assert before == 3 * 4  # minutes 0 to 3
    assert during == 0
    assert len(loop.log.matching("state.error")) == 1
    assert len(loop.log.matching("state.recovered")) == 1
    assert len(loop.calls) - before >= 3 * 2
    assert set(one.calls_per_run().values()) == {1}


def spy_on_abandoned(claims: Claiming) -> list[datetime]:
    """The dues of the runs `claims` reads as moved past (Claiming.abandoned), in order."""
    reads: list[datetime] = []
    read = claims.abandoned

    def counted(server: str, due: datetime) -> None:
        reads.append(due)
        read(server, due)

    claims.abandoned = counted  # type: ignore[method-assign]
    return reads


@pytest.mark.parametrize("finished", [False, True], ids=["holder_dies", "holder_finishes"])
def test_a_held_run_superseded_before_its_holders_lease_lapses_is_said_once(
    tmp_path: Path, finished: bool
) -> None:
    # A lease longer than `every`: the next run falls due before the dead holder's lease
    # lapses, so the survivor moves past the held run and never takes it over.
    config = fleet([{**server, "every": "1m"} for server in numbered(1)])
    lease = timedelta(seconds=90)
    with claims_engine("sqlite", tmp_path) as engine:
        pair = Instances(config, tmp_path, count=2, start=START, engine=engine, lease=lease)
        try:
            holder = pair.claims("web-0")
            claim = pair.dies_calling("web-0", "s0", START)  # or, below, only froze a while
            reads = spy_on_abandoned(pair.claims("web-1"))
            pair.run_for(MINUTE / 2)
            if finished:  # a live holder's result, written within its lease
                assert holder.finish(claim, "ok")
            pair.run_for(3 * MINUTE)
        finally:
            pair.close()
    survivor = pair.loops["web-1"]
    said = survivor.log.matching("claim.abandoned")
    # The survivor went on to the next runs either way, and never called the held one.
    assert [call.at for call in survivor.calls] == [START + n * MINUTE for n in (1, 2, 3)]
    if finished:  # found done by its holder: nothing said, nothing read again
        assert (said, reads) == ([], [])
        return
    assert reads == [START]  # one read of the claim, as the survivor moved past it
    (abandoned,) = said
    assert {k: abandoned[k] for k in ("server", "due", "holder", "state", "maybe_called")} == {
        "server": "s0",
        "due": START,
        "holder": "web-0",
        "state": "called",
        "maybe_called": True,
    }
    assert survivor.sample("refreshd_claims_abandoned_total", maybe_called="true") == 1
    assert survivor.log.matching("claim.taken_over") == []


def test_a_run_never_called_because_a_dead_process_holds_its_login_is_said_missed(
    tmp_path: Path,
) -> None:
    # A `refreshd refresh` killed mid-login leaves the login's lease in the state file; a
    # daemon whose window closes before that lease lapses cannot try the login: the slot
    # is told missed, naming why, instead of passing in silence.
    config = fleet(numbered(1, window="00:00-00:01"))
    lease = timedelta(seconds=90)
    with claims_engine("sqlite", tmp_path) as engine:
        pair = Instances(config, tmp_path, count=2, start=START, engine=engine, lease=lease)
        try:
            assert pair.claims("web-0").hold_login(USER) is None
            pair.stalled.add("web-0")
            pair.run_for(3 * MINUTE)
        finally:
            pair.close()
    daemon = pair.loops["web-1"]
    assert daemon.calls == []
    (missed,) = daemon.log.matching("slot.missed")
    assert missed["server"] == "s0"
    assert missed["outcome"] == str(Refused.LOGIN_HELD)
    assert missed["attempts"] == 0

"""A one-shot command's claims beside a fleet (refreshd/oneshot.py): `refresh` and
`check --online` take the fleet's login lease as a daemon does, wait (up to their patience)
where a daemon would look again later, then say who holds what; a manual refresh waits for
an instance's call on the same server. On a FakeClock, with the claims in a state file where
the leases are measured by it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from refreshd.clock import FakeClock
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.events import Events
from refreshd.oneshot import WAIT_LOOK, OneShotClaims, patience_of
from refreshd.runner import Runner, runner_for
from refreshd.shared import sqlite_engine
from refreshd.store import StateStore
from refreshd.tickets import Refused, Ticket, claim_run
from tests.support.instances import One
from tests.support.loop import Log, at, fleet

START = at("2027-01-04T00:00:00")
LEASE = timedelta(seconds=15)
PATIENCE = timedelta(seconds=10)  # shorter than a lease: a live holder is still holding
LOGIN = "refreshd"  # the ledger's key of tests.support.loop's user


class Meanwhile(FakeClock):
    """A FakeClock on which `then` runs at the first wait: another instance acting while
    this one waits."""

    then: Callable[[], None] | None = None

    def wait(self, event: threading.Event, seconds: float) -> bool:
        then, self.then = self.then, None
        if then is not None:
            then()
        return super().wait(event, seconds)


def one_shot(
    path: Path, clock: FakeClock, patience: timedelta = PATIENCE, log: Log | None = None
) -> OneShotClaims:
    events = Events(log or Log(), None, clock)
    claims = OneShotClaims(sqlite_engine(path, clock), "manual", LEASE, clock=clock, events=events)
    claims.patience = patience
    return claims


def test_a_one_shot_waits_its_patience_for_a_held_login_then_names_the_holder(
    tmp_path: Path,
) -> None:
    clock = FakeClock(START)
    daemon = One(sqlite_engine(tmp_path / "state.db", clock), "web-1", clock, LEASE)
    assert daemon.claims.hold_login(LOGIN) is None
    log = Log()
    manual = one_shot(tmp_path / "state.db", clock, log=log)
    started = clock.monotonic()

    why = manual.hold_login(LOGIN)

    assert why is not None
    assert why.startswith(f"{Refused.LOGIN_HELD} (web-1), still after 10 s: retry once")
    assert clock.monotonic() - started == pytest.approx(PATIENCE.total_seconds())
    (said,) = log.matching("claim.waiting")  # once, as the wait began
    assert said["waiting_for"] == f"{Refused.LOGIN_HELD} (web-1)"
    assert said["up_to_s"] == 10
    # The daemon's own look stays a refusal the scheduler knows (it plans again).
    assert daemon.claims.hold_login("other") is None
    assert One(daemon.claims.engine, "web-2", clock, LEASE).claims.hold_login(LOGIN) == (
        Refused.LOGIN_HELD
    )


def test_a_one_shot_takes_a_dead_holders_login_lease_once_it_has_lapsed(tmp_path: Path) -> None:
    clock = FakeClock(START)
    dead = One(sqlite_engine(tmp_path / "state.db", clock), "web-1", clock, LEASE)
    assert dead.claims.hold_login(LOGIN) is None  # and never renewed: the holder died
    manual = one_shot(tmp_path / "state.db", clock, patience=LEASE + PATIENCE)
    started = clock.monotonic()

    assert manual.hold_login(LOGIN) is None

    waited = clock.monotonic() - started
    assert LEASE.total_seconds() <= waited <= LEASE.total_seconds() + WAIT_LOOK
    assert manual.store.live_on("login/" + LOGIN) == [("manual", "claimed")]


def test_a_manual_refresh_waits_for_an_instances_call_on_the_server_then_goes(
    tmp_path: Path,
) -> None:
    clock = Meanwhile(START)
    daemon = One(sqlite_engine(tmp_path / "state.db", clock), "web-1", clock, LEASE)
    manual = one_shot(tmp_path / "state.db", clock)
    ticket = Ticket("east", START, daemon.claims)
    assert claim_run(ticket) is None  # claimed, marked called: its request is out
    assert ticket.claim is not None
    assert manual.quiet("west") is None  # another server's call holds nothing back

    why = manual.quiet("east")
    assert why is not None
    assert why.startswith("instance web-1 is calling this server's run, still after 10 s")
    assert "refreshd history east" in why

    clock.then = lambda: daemon.claims.finish(ticket.claim, "ok")  # type: ignore[arg-type]
    started = clock.monotonic()
    assert manual.quiet("east") is None  # answered meanwhile: the manual call goes
    assert clock.monotonic() - started == pytest.approx(WAIT_LOOK)


def test_a_one_shots_unproven_login_waits_for_the_fleets_and_takes_in_its_refusal(
    tmp_path: Path,
) -> None:
    # Two logins at once with a wrong password would cost two failed logins toward the
    # lock-out: the one-shot (check --online's probe here, refresh's dispatcher alike) waits
    # for the daemon's try, then reads its refusal from the journal and does not log in.
    clock = Meanwhile(START)
    config = fleet([{"name": "east", "windows": ["00:00-01:00"]}])
    daemon = Runner(config, store=StateStore(tmp_path / "state.db"), clock=clock, log=Log())
    daemon.configure(config, [], changed_logins=[])
    daemon.claims = One(sqlite_engine(tmp_path / "state.db", clock), "web-1", clock, LEASE).claims
    manual = runner_for(config, store=StateStore(tmp_path / "state.db"), clock=clock, log=Log())
    manual.claims = one_shot(tmp_path / "state.db", clock, patience_of(config))
    password = daemon.login_fingerprint("main") or ""
    assert daemon.admit(LOGIN, password) is None  # the daemon's call is out, unproven

    def refused() -> None:
        call = daemon.call_for(config.servers[0], attempt=1, due=START)
        daemon.settle(
            call, Attempt(Answer(Outcome.AUTH_FAILED, "ERROR: Login incorrect"), START, 9)
        )
        daemon.finished(LOGIN)

    clock.then = refused
    why = manual.admit(LOGIN, password)

    assert why is not None
    assert why == manual.why_waiting(LOGIN, clock.now())  # the daemon's refusal, journaled
    assert manual.claims.store.live_on("login/" + LOGIN) == []  # given back at once
    assert manual.ledger.login(LOGIN).in_flight == 0
    for runner in (daemon, manual):
        assert runner.store is not None
        runner.store.close()


def test_one_shots_on_a_state_file_share_the_login_lease_and_a_starting_daemon_keeps_it(
    tmp_path: Path,
) -> None:
    # Several `refresh` commands at once on one state file: the second waits for the first's
    # unproven login. A daemon starting meanwhile ends its dead predecessors' leases (the
    # file's lock proves them dead), never a live command's.
    clock = FakeClock(START)
    config = fleet([{"name": "east", "windows": ["00:00-01:00"]}])
    with StateStore(tmp_path / "state.db") as first, StateStore(tmp_path / "state.db") as second:
        manual = runner_for(config, store=first, clock=clock, log=Log())
        other = runner_for(config, store=second, clock=clock, log=Log())
        assert isinstance(manual.claims, OneShotClaims)
        assert isinstance(other.claims, OneShotClaims)
        assert manual.claims.hold_login(LOGIN) is None
        # The journals' engines measure leases by the host's clock, as in a real process:
        # the daemon's engine here too.
        daemon = One(sqlite_engine(tmp_path / "state.db"), "web-1", clock, LEASE)
        daemon.claims.exclusive = True
        daemon.claims.renew()  # its start: other daemons' leases in the file end here
        other.claims.patience = timedelta(0)

        why = other.claims.hold_login(LOGIN)

        assert why is not None
        assert why.startswith(str(Refused.LOGIN_HELD))
        assert daemon.claims.hold_login(LOGIN) == Refused.LOGIN_HELD


@pytest.mark.parametrize("waiting_for", ["login", "call"])
def test_a_one_shot_stopped_while_waiting_says_so_not_that_its_patience_ran_out(
    tmp_path: Path, waiting_for: str
) -> None:
    # Ctrl-C during the wait: the command stops its claims (cli/calls.py), the wait ends at
    # once, and the reason journaled and logged says it stopped, not "still after 10 s"
    # (it waited one look).
    clock = Meanwhile(START)
    daemon = One(sqlite_engine(tmp_path / "state.db", clock), "web-1", clock, LEASE)
    ticket = Ticket("east", START, daemon.claims)
    if waiting_for == "login":
        assert daemon.claims.hold_login(LOGIN) is None
    else:
        assert claim_run(ticket) is None
    manual = one_shot(tmp_path / "state.db", clock)
    clock.then = manual.stop
    started = clock.monotonic()

    why = manual.hold_login(LOGIN) if waiting_for == "login" else manual.quiet("east")

    assert why is not None
    assert clock.monotonic() - started <= WAIT_LOOK
    assert "still after" not in why
    assert why.endswith("; not waited for: the command is stopping")
    assert "web-1" in why


def test_a_one_shot_gives_its_login_lease_back_when_it_stops_mid_call(tmp_path: Path) -> None:
    # Ctrl-C while its unproven call is out: the command ends (cli/calls.py stops its
    # claims) and records nothing; the lease would only hold a daemon's or the next
    # command's login back a whole lease, protecting nothing (no answer will be journaled).
    clock = FakeClock(START)
    manual = one_shot(tmp_path / "state.db", clock)
    assert manual.hold_login(LOGIN) is None

    manual.stop()

    assert manual.store.live_on("login/" + LOGIN) == []
    daemon = One(sqlite_engine(tmp_path / "state.db", clock), "web-1", clock, LEASE)
    assert daemon.claims.hold_login(LOGIN) is None

"""The pure login rule against VICIdial's own lock-out rule, over a simulated month.

The daemon's calls, an operator's manual refreshes (some with --force), a password that
changes on the dialer and back, answers lost after the PHP ran (time-outs, resets, garbled
bodies) and connections refused before it: whatever hypothesis draws, the simulated
VICIdial (refreshd.simulator.rules, the same oracle the HTTP simulator uses) never locks
the user. The rule under test is the core's: `settle` on the ledger, the gate
`credentials_attempt_allowed` and the failed-login budget, with time passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from refreshd.core.ledger import Call, Ledger, LoginEntry
from refreshd.core.policy import Backoff, credentials_attempt_allowed
from refreshd.core.settle import settle
from refreshd.core.slots import Slot
from refreshd.core.vicidial import Answer, Attempt, Outcome, Transport, classify, refresh_params
from refreshd.simulator.rules import SimUser, Vicidial

USER, CONFIGURED = "refreshd", "configured-pass-1"
START = datetime(2027, 2, 1, tzinfo=UTC)
MONTH = timedelta(days=30)
LOGIN = USER


@dataclass(frozen=True)
class World:
    """What hypothesis draws: how often each thing happens."""

    seed: int
    auth_retry_minutes: int
    lost: float  # an answer lost after the PHP ran
    refused: float  # a connection refused before it
    manual: float  # a step is an operator's `refreshd refresh`
    force: float  # ... with --force
    dialer_changes: float  # the dialer's password flips between right and wrong


def blocked_until(entry: LoginEntry, now: datetime, *, force: bool) -> datetime | None:
    """What the runner's gate asks: the wait (unless forced past) and the budget."""
    ends = [entry.budget_spent_until(now)]
    if not force:
        ends.append(entry.waiting_at(now))
    later = [t for t in ends if t is not None and t > now]
    return max(later, default=None)


def one_call(
    vicidial: Vicidial, world: World, rng: random.Random, now: datetime, password: str
) -> Answer:
    """The call as it goes on the wire: refused before the PHP, lost after it, or read."""
    if rng.random() < world.refused:
        return classify(None, None, Transport.CONNECTION_REFUSED)
    php = vicidial.answer(refresh_params(USER, password, "test"), "10.0.0.1", now.timestamp())
    if rng.random() < world.lost:
        return classify(None, None, Transport.TIMEOUT)  # the PHP ran; we never saw it
    return classify(php.status, php.body, secrets=(password,))


def simulate(world: World) -> Vicidial:
    rng = random.Random(world.seed)
    vicidial = Vicidial([SimUser(USER, CONFIGURED)])
    backoff = Backoff(
        retry_initial=timedelta(seconds=1),
        retry_max=timedelta(seconds=4),
        auth_retry=timedelta(minutes=world.auth_retry_minutes),
    )
    ledger, now = Ledger(), START
    slot = Slot(START, START + MONTH)
    while now < START + MONTH:
        now += timedelta(seconds=rng.choice((1, 2, 5, 30, 60, 300, 900)))
        if rng.random() < world.dialer_changes:
            right = rng.random() < 0.5
            vicidial.update_user(USER, password=CONFIGURED if right else "changed-on-dialer")
        manual = rng.random() < world.manual
        force = manual and rng.random() < world.force
        entry = ledger.login(LOGIN)
        until = blocked_until(entry, now, force=force)
        if manual and until is not None:
            continue  # the command refuses, saying until when
        if not manual and not credentials_attempt_allowed(
            wait_until=until, logins_in_flight=0, proven="fp" in entry.proven, now=now
        ):
            continue
        answer = one_call(vicidial, world, rng, now, CONFIGURED)
        call = Call(
            server="east",
            login=LOGIN,
            credentials="main",
            slot=None if manual else slot,
            due=None if manual else now,
            retry_until=None if manual else slot.end,
            login_fingerprint="fp",
        )
        done = settle(ledger, call, Attempt(answer, now, 5), backoff=backoff, rng=rng, now=now)
        ledger = done.ledger
    return vicidial


@settings(max_examples=6, deadline=None)
@given(
    st.builds(
        World,
        seed=st.integers(0, 2**32),
        auth_retry_minutes=st.sampled_from([5, 15, 60, 360]),
        lost=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
        refused=st.sampled_from([0.0, 0.2]),
        manual=st.sampled_from([0.0, 0.1, 0.5]),
        force=st.sampled_from([0.0, 0.5, 1.0]),
        dialer_changes=st.sampled_from([0.0, 0.001, 0.05]),
    )
)
def test_a_month_of_random_answers_and_commands_never_locks_the_user(world: World) -> None:
    vicidial = simulate(world)

    assert vicidial.lockouts == [], world


def test_the_simulation_locks_a_client_that_ignores_the_budget() -> None:
    # The control: the oracle does lock a client that keeps trying after a good login
    # (ten failures within 15 minutes of it), so "never locked" above can fail.
    now = START
    vicidial = Vicidial([SimUser(USER, CONFIGURED)])
    vicidial.answer(refresh_params(USER, CONFIGURED, "test"), "10.0.0.1", now.timestamp())
    vicidial.update_user(USER, password="changed-on-dialer")
    for _ in range(10):
        now += timedelta(seconds=30)
        vicidial.answer(refresh_params(USER, CONFIGURED, "test"), "10.0.0.1", now.timestamp())
    assert vicidial.lockouts != []


def test_lost_answers_alone_pause_the_user_after_three_in_fifteen_minutes() -> None:
    world = World(1, 360, lost=1.0, refused=0.0, manual=0.0, force=0.0, dialer_changes=0.0)
    rng = random.Random(1)
    backoff = Backoff(retry_initial=timedelta(seconds=1), retry_max=timedelta(seconds=2))
    vicidial = Vicidial([SimUser(USER, "changed-on-dialer")])
    ledger, now = Ledger(), START
    calls = []
    for _ in range(100):
        now += timedelta(seconds=2)
        entry = ledger.login(LOGIN)
        if blocked_until(entry, now, force=False) is not None:
            continue
        calls.append(now)
        answer = one_call(vicidial, world, rng, now, CONFIGURED)
        call = Call("east", LOGIN, "main", login_fingerprint="fp")
        ledger = settle(
            ledger, call, Attempt(answer, now, 5), backoff=backoff, rng=rng, now=now
        ).ledger
    assert len(calls) == 3
    assert vicidial.failed_login_count(USER) == 3


def test_a_good_password_does_not_end_the_wait_another_tables_password_earned() -> None:
    # Two tables, one user: the stale password's refusal starts the user's wait; the good
    # password's success settled after it (its answer came first) proves the good one but
    # leaves the wait, which the stale password still deserves.
    rng, now = random.Random(1), START
    backoff = Backoff(auth_retry=timedelta(hours=1))
    stale = Call("south", LOGIN, "south", login_fingerprint="stale")
    good = Call("east", LOGIN, "east", login_fingerprint="good")
    refused = classify(200, f"ERROR: Login incorrect, please try again: |{USER}|x|BAD|")
    ok = classify(200, "SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - x|2")

    ledger = settle(Ledger(), stale, Attempt(refused, now, 5), backoff=backoff, rng=rng, now=now)
    ledger = settle(ledger.ledger, good, Attempt(ok, now, 5), backoff=backoff, rng=rng, now=now)

    entry = ledger.ledger.login(LOGIN)
    assert entry.wait_until == now + timedelta(hours=1)
    assert entry.proven == frozenset({"good"})
    assert [e.kind for e in ledger.events] == ["refresh.succeeded"]


def test_a_settled_run_is_done_and_leaves_the_login_alone() -> None:
    # A lost call found taken in the cluster's database: no call was made here, so nothing
    # is learnt of the login (not proven, no failed login, a wait kept) and the run is done.
    now, backoff, rng = START, Backoff(), random.Random(0)
    waiting = LoginEntry(wait_until=now + timedelta(hours=1), wait_reason="refused")
    ledger = Ledger().with_logins({LOGIN: waiting})
    slot = Slot(now - timedelta(minutes=5), now + timedelta(hours=1))
    call = Call("east", LOGIN, "main", slot=slot, due=slot.start, login_fingerprint="fp")
    stamp = now - timedelta(minutes=4)
    answer = Answer(Outcome.SETTLED, "taken", reached=False)
    lost = Attempt(answer, now - timedelta(minutes=5), 0, reload_timestamp=stamp)

    done = settle(ledger, call, lost, backoff=backoff, rng=rng, now=now)

    assert done.run_done
    assert done.ledger.server("east").last_done == slot.start
    assert done.ledger.server("east").last_outcome is Outcome.SETTLED
    assert done.logins == {}
    assert done.ledger.login(LOGIN) == waiting
    (event,) = done.events
    assert event.kind == "refresh.settled"
    assert event.fields["started"] == lost.started_at
    assert event.fields["reload_timestamp"] == stamp
    assert event.fields["due"] == slot.start

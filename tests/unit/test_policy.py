"""The back-off policy: every outcome's action, the exact delays, and lock-out safety."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from refreshd.core.policy import (
    LOCKOUT_SAFE_AUTH_RETRY,
    LOCKOUT_WAIT,
    MAX_LOGINS_IN_FLIGHT,
    RETRY_FLOOR,
    VICIDIAL_LOCKOUT,
    Action,
    Backoff,
    LoginWait,
    WaitKind,
    credentials_attempt_allowed,
    decide,
    login_wait,
    retry_delay,
    suspension_length,
)
from refreshd.core.vicidial import Outcome, classify, refresh_params
from refreshd.simulator.rules import LOCK_SECONDS, LOCK_TRIGGER_ATTEMPTS, SimUser, Vicidial

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
SLOT_END = NOW + timedelta(hours=2)
DEFAULT = Backoff()
S = timedelta(seconds=1)
M = timedelta(minutes=1)
H = timedelta(hours=1)


class MaxRandom(random.Random):
    """Always draws the top of the range: exposes the caps."""

    def uniform(self, a: float, b: float) -> float:
        return b


class ZeroRandom(random.Random):
    """Always draws the bottom of the range: exposes the floor."""

    def uniform(self, a: float, b: float) -> float:
        return a


def decide_default(
    outcome: Outcome,
    *,
    attempt: int = 1,
    suspensions: int = 0,
    retry_until: datetime = SLOT_END,
    backoff: Backoff = DEFAULT,
) -> tuple[Action, datetime | None, int]:
    d = decide(
        outcome,
        attempt=attempt,
        now=NOW,
        retry_until=retry_until,
        suspensions=suspensions,
        backoff=backoff,
        rng=MaxRandom(),
    )
    assert d.reason
    return d.action, d.at, d.suspensions


# -- every outcome ----------------------------------------------------------------------

# (outcome, action, at, suspensions after) for attempt 1, 2 suspensions before, default
# backoff and a retry draw at the top of its range.
OUTCOME_TABLE: list[tuple[Outcome, Action, datetime | None, int]] = [
    (Outcome.OK, Action.DONE, None, 0),
    (Outcome.SETTLED, Action.DONE, None, 0),
    (Outcome.TRANSIENT, Action.RETRY, NOW + 30 * S, 2),
    (Outcome.UNEXPECTED, Action.RETRY, NOW + 30 * S, 2),
    (Outcome.PERMISSION_DENIED, Action.SUSPEND_SERVER, NOW + 4 * H, 3),
    (Outcome.IP_BLOCKED, Action.SUSPEND_SERVER, NOW + 4 * H, 3),
    (Outcome.NOT_FOUND, Action.SUSPEND_SERVER, NOW + 4 * H, 3),
    (Outcome.BAD_REQUEST, Action.SUSPEND_SERVER, NOW + 4 * H, 3),
    (Outcome.TLS_REJECTED, Action.SUSPEND_SERVER, NOW + 4 * H, 3),
    (Outcome.PROXY_REFUSED, Action.SUSPEND_SERVER, NOW + 4 * H, 3),
    (Outcome.AUTH_FAILED, Action.WAIT_CREDENTIALS, NOW + 6 * H, 2),
    (Outcome.LOCKED_OUT, Action.WAIT_CREDENTIALS, NOW + 6 * H, 2),
]


@pytest.mark.parametrize(("outcome", "action", "at", "suspensions"), OUTCOME_TABLE)
def test_each_outcome_leads_to_its_action(
    outcome: Outcome, action: Action, at: datetime | None, suspensions: int
) -> None:
    assert decide_default(outcome, suspensions=2) == (action, at, suspensions)


def test_the_outcome_table_covers_every_outcome() -> None:
    assert {row[0] for row in OUTCOME_TABLE} == set(Outcome)


def test_ok_resets_the_suspension_count() -> None:
    assert decide_default(Outcome.OK, suspensions=7) == (Action.DONE, None, 0)


def test_locked_out_waits_at_least_the_vicidial_lock_plus_a_margin() -> None:
    short = Backoff(auth_retry=LOCKOUT_SAFE_AUTH_RETRY)
    assert timedelta(minutes=15) < LOCKOUT_WAIT
    assert decide_default(Outcome.LOCKED_OUT, backoff=short)[1] == NOW + LOCKOUT_WAIT


def test_locked_out_then_waits_like_auth_failed_when_auth_retry_is_longer() -> None:
    assert decide_default(Outcome.LOCKED_OUT)[1] == NOW + DEFAULT.auth_retry


def test_auth_failed_waits_auth_retry() -> None:
    custom = Backoff(auth_retry=timedelta(minutes=15))
    assert decide_default(Outcome.AUTH_FAILED, backoff=custom)[1] == NOW + 15 * M


def test_reasons_name_the_outcome_and_the_wait() -> None:
    d = decide(
        Outcome.PERMISSION_DENIED,
        attempt=1,
        now=NOW,
        retry_until=SLOT_END,
        suspensions=0,
        backoff=DEFAULT,
        rng=random.Random(1),
    )
    assert d.reason == "permission_denied: server suspended for 1h"


# -- retry delays -----------------------------------------------------------------------


def test_retry_delays_follow_the_seeded_full_jitter_sequence() -> None:
    rng = random.Random(2026)
    delays = [retry_delay(attempt, DEFAULT, rng) for attempt in range(1, 9)]
    assert delays == [
        timedelta(seconds=3, microseconds=573597),
        timedelta(seconds=30, microseconds=150945),
        timedelta(seconds=61, microseconds=418726),
        timedelta(seconds=206, microseconds=400141),
        timedelta(seconds=49, microseconds=265688),
        timedelta(seconds=133, microseconds=970734),
        timedelta(seconds=360, microseconds=618391),
        timedelta(seconds=333, microseconds=935413),
    ]


def test_retry_delay_caps_double_from_retry_initial_to_retry_max() -> None:
    delays = [retry_delay(attempt, DEFAULT, MaxRandom()) for attempt in range(1, 9)]
    assert delays == [30 * S, 60 * S, 120 * S, 240 * S, 480 * S, 600 * S, 600 * S, 600 * S]


def test_retry_delay_stays_capped_for_absurd_attempt_numbers() -> None:
    assert retry_delay(10_000, DEFAULT, MaxRandom()) == DEFAULT.retry_max


def test_retry_delay_never_drops_below_the_floor() -> None:
    assert retry_delay(1, DEFAULT, ZeroRandom()) == RETRY_FLOOR
    assert timedelta(0) < RETRY_FLOOR


def test_retry_delay_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt"):
        retry_delay(0, DEFAULT, random.Random(1))


@pytest.mark.parametrize("seed", range(20))
def test_retry_delays_stay_within_floor_and_cap(seed: int) -> None:
    rng = random.Random(seed)
    for attempt in range(1, 12):
        cap = min(DEFAULT.retry_max, DEFAULT.retry_initial * 2 ** (attempt - 1))
        assert RETRY_FLOOR <= retry_delay(attempt, DEFAULT, rng) <= cap


# -- retries never pass the slot's end ---------------------------------------------------


def test_retry_is_given_up_when_it_would_land_exactly_on_retry_until() -> None:
    assert decide_default(Outcome.TRANSIENT, retry_until=NOW + 30 * S)[0] is Action.GIVE_UP


def test_retry_is_kept_when_it_lands_just_before_retry_until() -> None:
    until = NOW + 30 * S + timedelta(microseconds=1)
    assert decide_default(Outcome.TRANSIENT, retry_until=until)[:2] == (
        Action.RETRY,
        NOW + 30 * S,
    )


def test_retry_is_given_up_once_the_slot_has_ended() -> None:
    assert decide_default(Outcome.UNEXPECTED, retry_until=NOW - M) == (Action.GIVE_UP, None, 0)


@pytest.mark.parametrize("seed", range(50))
def test_a_retry_is_never_scheduled_at_or_after_retry_until(seed: int) -> None:
    rng = random.Random(seed)
    until = NOW + timedelta(seconds=rng.uniform(0, 900))
    for attempt in range(1, 15):
        d = decide(
            Outcome.TRANSIENT,
            attempt=attempt,
            now=NOW,
            retry_until=until,
            suspensions=0,
            backoff=DEFAULT,
            rng=rng,
        )
        if d.action is Action.RETRY:
            assert d.at is not None
            assert NOW < d.at < until
        else:
            assert d.action is Action.GIVE_UP
            assert d.at is None


# -- suspensions ------------------------------------------------------------------------


def test_suspensions_double_from_suspend_initial_and_cap_at_suspend_max() -> None:
    lengths = [suspension_length(n, DEFAULT) for n in range(8)]
    assert lengths == [1 * H, 2 * H, 4 * H, 8 * H, 16 * H, 24 * H, 24 * H, 24 * H]
    assert suspension_length(10_000, DEFAULT) == 24 * H


def test_consecutive_suspending_outcomes_count_up() -> None:
    suspensions, ends = 0, []
    for _ in range(4):
        action, at, suspensions = decide_default(Outcome.NOT_FOUND, suspensions=suspensions)
        assert action is Action.SUSPEND_SERVER
        ends.append(at)
    assert suspensions == 4
    assert ends == [NOW + 1 * H, NOW + 2 * H, NOW + 4 * H, NOW + 8 * H]


def test_suspension_length_rejects_a_negative_count() -> None:
    with pytest.raises(ValueError, match="suspensions"):
        suspension_length(-1, DEFAULT)


# -- the credentials gate ---------------------------------------------------------------


def test_no_call_starts_during_a_credentials_wait() -> None:
    assert not credentials_attempt_allowed(
        wait_until=NOW + S, logins_in_flight=0, proven=True, now=NOW
    )
    assert credentials_attempt_allowed(wait_until=NOW, logins_in_flight=0, proven=True, now=NOW)


def test_unproven_credentials_allow_one_call_at_a_time() -> None:
    assert credentials_attempt_allowed(wait_until=None, logins_in_flight=0, proven=False, now=NOW)
    assert not credentials_attempt_allowed(
        wait_until=None, logins_in_flight=1, proven=False, now=NOW
    )


def test_proven_credentials_allow_a_bounded_number_of_calls_in_flight() -> None:
    def allowed(n: int) -> bool:
        return credentials_attempt_allowed(
            wait_until=None, logins_in_flight=n, proven=True, now=NOW
        )

    assert allowed(MAX_LOGINS_IN_FLIGHT - 1)
    assert not allowed(MAX_LOGINS_IN_FLIGHT)


# -- lock-out safety: a simulated week ----------------------------------------------------

LOCK_WINDOW = timedelta(seconds=LOCK_SECONDS)
# The login every server shares, and the call each makes once its password has changed.
API_USER = SimUser("refreshd", "the-new-password")
WRONG_PASSWORD_CALL = refresh_params("refreshd", "the-old-password", "refreshd")


def call_vicidial(vicidial: Vicidial, now: datetime) -> Outcome:
    """One call as VICIdial answers it (the simulator's rules) and refreshd reads it."""
    answer = vicidial.answer(WRONG_PASSWORD_CALL, "192.0.2.10", now.timestamp())
    return classify(answer.status, answer.body).outcome


def simulate_shared_wrong_password(
    backoff: Backoff,
    *,
    proven_at_start: bool,
    gated: bool = True,
    servers: int = 10,
    days: int = 7,
) -> tuple[list[datetime], Vicidial]:
    """Login failure times when `servers` share one wrong password for `days`.

    Every server wants a refresh every minute (a one-minute slot). Calls allowed in a
    minute start together, so they are all in flight before any answer arrives, as in
    the daemon's worker pool; their answers arrive before the next minute.
    `proven_at_start` models a password changed under a daemon that had been
    succeeding: the worst case, as proven credentials allow a burst.
    """
    start = datetime(2026, 1, 5, tzinfo=UTC)
    vicidial = Vicidial(users=[API_USER])
    rng = random.Random(7)
    wait_until: datetime | None = None
    proven = proven_at_start
    failures: list[datetime] = []
    for minute in range(days * 24 * 60):
        now = start + minute * M
        in_flight = 0
        for _server in range(servers):
            if gated and not credentials_attempt_allowed(
                wait_until=wait_until, logins_in_flight=in_flight, proven=proven, now=now
            ):
                continue
            in_flight += 1
        for _call in range(in_flight):
            outcome = call_vicidial(vicidial, now)
            failures.append(now)
            d = decide(
                outcome,
                attempt=1,
                now=now,
                retry_until=now + M,
                suspensions=0,
                backoff=backoff,
                rng=rng,
            )
            assert d.action is Action.WAIT_CREDENTIALS
            assert d.at is not None
            wait_until = d.at if wait_until is None else max(wait_until, d.at)
            proven = False
    return failures, vicidial


def most_in_any_window(times: Sequence[datetime], window: timedelta) -> int:
    """The most events in any closed interval of length `window` (times sorted)."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] > window:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.parametrize(
    "auth_retry",
    [timedelta(hours=6), timedelta(minutes=15), LOCKOUT_SAFE_AUTH_RETRY],
    ids=["auth_retry=6h", "auth_retry=15m", "auth_retry=5m"],
)
@pytest.mark.parametrize("proven_at_start", [False, True], ids=["fresh", "password-changed"])
def test_ten_servers_sharing_a_wrong_password_never_lock_the_login(
    auth_retry: timedelta, proven_at_start: bool
) -> None:
    backoff = Backoff(auth_retry=auth_retry)
    failures, vicidial = simulate_shared_wrong_password(backoff, proven_at_start=proven_at_start)
    most = most_in_any_window(failures, LOCK_WINDOW)
    assert most < LOCK_TRIGGER_ATTEMPTS, (
        f"{most} failed logins within 15 minutes (auth_retry {auth_retry})"
    )
    assert vicidial.lockouts == []
    # At most one login per credentials per auth_retry, after the first burst.
    attempt_minutes = sorted(set(failures))
    gaps = [b - a for a, b in pairwise(attempt_minutes)]
    assert min(gaps) >= auth_retry
    print(f"auth_retry {auth_retry}: {len(failures)} failures in a week, at most {most} in 15 min")


def test_the_simulation_catches_a_client_that_ignores_the_gate() -> None:
    # A day is plenty: such a client locks the login in its second minute.
    failures, vicidial = simulate_shared_wrong_password(
        DEFAULT, proven_at_start=True, gated=False, days=1
    )
    assert most_in_any_window(failures, LOCK_WINDOW) >= LOCK_TRIGGER_ATTEMPTS
    assert vicidial.lockouts


def test_backoff_accepts_short_auth_retry_for_tests() -> None:
    # Below LOCKOUT_SAFE_AUTH_RETRY the lock-out bound no longer holds; config warns.
    assert Backoff(auth_retry=S).auth_retry == S


def test_the_login_wait_names_a_spent_failed_login_budget_as_its_own_kind() -> None:
    minute = timedelta(minutes=1)
    failed = (NOW - 3 * minute, NOW - 2 * minute, NOW - minute)

    wait = login_wait(None, failed, NOW)

    assert wait is not None
    assert wait.kind is WaitKind.FAILED_LOGIN_BUDGET
    assert wait.until == failed[0] + VICIDIAL_LOCKOUT
    assert login_wait(None, failed[1:], NOW) is None


@pytest.mark.parametrize(
    ("journaled_for", "kind"),
    [
        (timedelta(hours=6), WaitKind.REFUSED_LOGIN),  # the longer wait binds: its kind
        (timedelta(minutes=5), WaitKind.FAILED_LOGIN_BUDGET),
    ],
)
def test_the_login_wait_is_the_one_that_ends_last(journaled_for: timedelta, kind: WaitKind) -> None:
    minute = timedelta(minutes=1)
    failed = (NOW - 3 * minute, NOW - 2 * minute, NOW - minute)
    journaled = LoginWait(NOW + journaled_for, WaitKind.REFUSED_LOGIN, "login refused")

    wait = login_wait(journaled, failed, NOW)

    assert wait is not None
    assert wait.kind is kind
    assert wait.until == max(NOW + journaled_for, failed[0] + VICIDIAL_LOCKOUT)

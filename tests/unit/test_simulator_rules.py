"""The simulator's VICIdial rules, in-process: the lock-out as the oracle other tests use."""

from __future__ import annotations

import pytest

from refreshd.core.vicidial import refresh_params
from refreshd.simulator.rules import (
    LOCK_SECONDS,
    LOCK_TRIGGER_ATTEMPTS,
    Answer,
    Lockout,
    SimUser,
    Vicidial,
)

T0 = 1_700_000_000.0
IP = "127.0.0.1"
RIGHT = refresh_params("api", "right-pass", "test")
WRONG = refresh_params("api", "wrong-pass", "test")


@pytest.fixture
def vicidial() -> Vicidial:
    return Vicidial(users=[SimUser("api", "right-pass")])


def fail(vicidial: Vicidial, times: int, now: float) -> list[str]:
    return [vicidial.answer(WRONG, IP, now).kind for _ in range(times)]


def test_a_good_login_refreshes_and_flags_every_active_server(vicidial: Vicidial) -> None:
    answer = vicidial.answer(RIGHT, IP, T0)
    assert answer == Answer(
        200, "SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - api|2\n", "success"
    )
    assert [vicidial.flagged(s.server_ip) for s in vicidial.servers] == [True, True]


def test_the_tenth_failure_after_a_good_login_locks_until_15_minutes_after_it(
    vicidial: Vicidial,
) -> None:
    vicidial.answer(RIGHT, IP, T0)
    assert fail(vicidial, LOCK_TRIGGER_ATTEMPTS - 1, T0 + 60) == ["login_incorrect"] * 9
    assert vicidial.lockouts == []
    fail(vicidial, 1, T0 + 120)
    assert vicidial.lockouts == [Lockout("api", T0 + 120, T0 + LOCK_SECONDS)]
    assert vicidial.answer(RIGHT, IP, T0 + 130).kind == "locked"


def test_from_a_quiet_account_the_lock_comes_at_the_21st_failure(vicidial: Vicidial) -> None:
    kinds = fail(vicidial, 21, T0)
    assert kinds == ["login_incorrect"] * 20 + ["locked"]
    assert [lock.at for lock in vicidial.lockouts] == [T0]


def test_at_exactly_900_seconds_the_login_is_still_locked(vicidial: Vicidial) -> None:
    fail(vicidial, 20, T0)
    assert vicidial.is_locked("api", T0 + LOCK_SECONDS)
    assert not vicidial.is_locked("api", T0 + LOCK_SECONDS + 0.001)
    assert vicidial.answer(RIGHT, IP, T0 + LOCK_SECONDS + 0.001).kind == "success"
    assert vicidial.failed_login_count("api") == 0


def test_attempts_while_locked_neither_count_nor_stamp(vicidial: Vicidial) -> None:
    fail(vicidial, 20, T0)
    for second in range(0, int(LOCK_SECONDS), 30):
        assert vicidial.answer(WRONG, IP, T0 + second).kind == "locked"
    assert vicidial.failed_login_count("api") == LOCK_TRIGGER_ATTEMPTS
    assert vicidial.tally.logins["failed"] == 20
    assert not vicidial.is_locked("api", T0 + LOCK_SECONDS + 1)
    assert len(vicidial.lockouts) == 1


def test_the_answer_depends_on_now_only_as_given(vicidial: Vicidial) -> None:
    version = {"function": "version"}
    assert vicidial.answer(version, IP, T0) == vicidial.answer(version, IP, T0)
    assert "EPOCH: 1700000000|" in vicidial.answer(version, IP, T0).body


def test_reset_forgets_lockouts_and_failures(vicidial: Vicidial) -> None:
    fail(vicidial, 20, T0)
    vicidial.reset()
    assert vicidial.lockouts == []
    assert vicidial.failed_login_count("api") == 0
    assert not vicidial.is_locked("api", T0)

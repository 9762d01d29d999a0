"""The heartbeat's step watch: a wall-clock step is noticed once, with its size; a thread
descheduled between two clock reads (a loaded host) is not taken for a step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from refreshd.clock import FakeClock, StepWatch

START = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
THRESHOLD = 2.0


class StallingClock(FakeClock):
    """A fake clock whose next wall reading comes `stall` seconds late: the reading thread
    was descheduled between its monotonic and its wall read."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.stall = 0.0

    def now(self) -> datetime:
        stall, self.stall = self.stall, 0.0
        self.advance(timedelta(seconds=stall))
        return super().now()


def test_a_step_back_and_a_step_ahead_are_each_seen_once_with_their_size() -> None:
    clock = FakeClock(START)
    watch = StepWatch(clock, THRESHOLD)
    clock.advance(timedelta(seconds=10))
    assert watch.look() is None  # time passing is not a step
    clock.step_wall(timedelta(seconds=-12))
    clock.advance(timedelta(seconds=10))
    assert watch.look() == -12
    clock.advance(timedelta(seconds=10))
    assert watch.look() is None  # the step is told once
    clock.step_wall(timedelta(hours=1))
    assert watch.look() == 3600


def test_a_step_within_the_threshold_is_not_a_jump() -> None:
    clock = FakeClock(START)
    watch = StepWatch(clock, THRESHOLD)
    clock.step_wall(timedelta(seconds=1.9))
    assert watch.look() is None
    clock.step_wall(timedelta(seconds=-2.1))
    assert watch.look() == pytest.approx(-2.1)


def test_a_reader_descheduled_between_its_reads_sees_no_step_then_or_after() -> None:
    clock = StallingClock(START)
    watch = StepWatch(clock, THRESHOLD)
    clock.advance(timedelta(seconds=10))
    clock.stall = 5.0  # longer than the threshold: read back to back, it would pass for one
    assert watch.look() is None
    clock.advance(timedelta(seconds=10))
    assert watch.look() is None  # nor does the next, clean reading look like a step back


def test_a_real_step_during_a_stall_is_told_by_the_next_sure_reading() -> None:
    clock = StallingClock(START)
    watch = StepWatch(clock, THRESHOLD)
    clock.stall = 3.0
    clock.step_wall(timedelta(seconds=-60))
    assert watch.look() is None  # unsure by 1.5 s: not compared, not kept
    clock.advance(timedelta(seconds=10))
    assert watch.look() == pytest.approx(-60)


def test_a_small_stall_still_compares_within_its_uncertainty() -> None:
    clock = StallingClock(START)
    watch = StepWatch(clock, THRESHOLD)
    clock.stall = 0.8  # unsure by 0.4 s: compared, and a step must pass 2.4 s
    clock.step_wall(timedelta(seconds=-2.2))
    assert watch.look() is None
    clock.stall = 0.8
    clock.step_wall(timedelta(seconds=-5))
    step = watch.look()
    assert step is not None
    assert -5.9 < step < -4.1

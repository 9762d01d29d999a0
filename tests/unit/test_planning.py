"""Choosing a server's next run: catch-up, done runs, suspensions, retry limits (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from refreshd.core.planning import (
    earliest_start,
    look_again_at,
    never_runs,
    next_fire,
    retry_until,
    success_gap,
)
from refreshd.core.runs import HORIZON
from refreshd.core.slots import Schedule
from refreshd.core.windows import parse_blackout_window, parse_window

NY = ZoneInfo("America/New_York")


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _schedule(*windows: str, every: timedelta | None = None, blackouts: tuple[str, ...] = ()):
    return Schedule(
        name="east-1",
        tz=ZoneInfo("UTC"),
        windows=tuple(parse_window(w) for w in windows),
        blackouts=tuple(parse_blackout_window(b) for b in blackouts),
        every=every,
    )


def test_started_inside_an_open_slot_not_done_fires_at_once() -> None:
    schedule = _schedule("02:00-04:00")
    now = _utc(2027, 1, 5, 3, 0)
    chosen = next_fire(schedule, now, None)
    assert chosen is not None
    assert chosen.at == now
    assert chosen.run.due == _utc(2027, 1, 5, 2, 0)
    assert chosen.catch_up


def test_started_inside_a_slot_already_done_waits_for_the_next_slot() -> None:
    schedule = _schedule("02:00-04:00")
    chosen = next_fire(schedule, _utc(2027, 1, 5, 3, 0), _utc(2027, 1, 5, 2, 0))
    assert chosen is not None
    assert chosen.at == _utc(2027, 1, 6, 2, 0)
    assert not chosen.catch_up


def test_started_after_the_window_waits_for_the_next_one() -> None:
    schedule = _schedule("02:00-04:00")
    chosen = next_fire(schedule, _utc(2027, 1, 5, 5, 0), None)
    assert chosen is not None
    assert chosen.at == _utc(2027, 1, 6, 2, 0)


def test_catch_up_with_every_takes_only_the_latest_started_run() -> None:
    schedule = _schedule("02:00-04:00", every=timedelta(minutes=30))
    chosen = next_fire(schedule, _utc(2027, 1, 5, 3, 10), None)
    assert chosen is not None
    assert chosen.run.due == _utc(2027, 1, 5, 3, 0)
    assert chosen.at == _utc(2027, 1, 5, 3, 10)


def test_with_every_a_done_run_leads_to_the_next_repeat() -> None:
    schedule = _schedule("02:00-04:00", every=timedelta(minutes=30))
    chosen = next_fire(schedule, _utc(2027, 1, 5, 3, 10), _utc(2027, 1, 5, 3, 0))
    assert chosen is not None
    assert chosen.at == _utc(2027, 1, 5, 3, 30)


def test_runs_up_to_the_latest_done_are_skipped() -> None:
    schedule = _schedule("00:00-24:00", every=timedelta(minutes=1))
    start = _utc(2027, 1, 5, 0, 0)
    chosen = next_fire(schedule, start, start + timedelta(minutes=99))
    assert chosen is not None
    assert chosen.at == start + timedelta(minutes=100)


def test_no_catch_up_inside_a_blackout() -> None:
    schedule = _schedule("02:00-06:00", blackouts=("03:00-04:00",))
    chosen = next_fire(schedule, _utc(2027, 1, 5, 3, 30), None)
    assert chosen is not None
    # The slot's only run (02:00) cannot start in the blackout; the next slot's run can.
    assert chosen.at == _utc(2027, 1, 6, 2, 0)


def test_nothing_ahead_gives_none() -> None:
    schedule = _schedule("02:00-04:00", blackouts=("00:00-24:00",))
    assert next_fire(schedule, _utc(2027, 1, 5, 0, 0), None) is None


def test_catch_up_on_the_spring_forward_day_starts_after_the_gap() -> None:
    schedule = Schedule(name="ny", tz=NY, windows=(parse_window("02:30-03:30"),))
    chosen = next_fire(schedule, datetime(2027, 3, 14, 0, 0, tzinfo=NY), None)
    assert chosen is not None
    assert chosen.at.astimezone(NY).replace(tzinfo=None) == datetime(2027, 3, 14, 3, 0)


def test_earliest_start_is_the_latest_of_now_suspension_and_wait() -> None:
    now = _utc(2027, 1, 5, 2, 0)
    assert earliest_start(now, None, None) == now
    assert earliest_start(now, now + timedelta(hours=1), None) == now + timedelta(hours=1)
    assert earliest_start(now, now - timedelta(hours=1), now + timedelta(minutes=5)) == (
        now + timedelta(minutes=5)
    )


def test_retry_until_is_the_slot_end() -> None:
    schedule = _schedule("02:00-04:00")
    run = next_fire(schedule, _utc(2027, 1, 5, 2, 0), None)
    assert run is not None
    assert retry_until(schedule, run.run, _utc(2027, 1, 5, 2, 1)) == _utc(2027, 1, 5, 4, 0)


def test_retry_until_stops_at_the_next_repeat() -> None:
    schedule = _schedule("02:00-04:00", every=timedelta(minutes=30))
    run = next_fire(schedule, _utc(2027, 1, 5, 2, 0), None)
    assert run is not None
    assert retry_until(schedule, run.run, _utc(2027, 1, 5, 2, 1)) == _utc(2027, 1, 5, 2, 30)


def test_retry_until_stops_at_a_blackout() -> None:
    schedule = _schedule("02:00-06:00", blackouts=("03:00-04:00",))
    run = next_fire(schedule, _utc(2027, 1, 5, 2, 0), None)
    assert run is not None
    assert retry_until(schedule, run.run, _utc(2027, 1, 5, 2, 1)) == _utc(2027, 1, 5, 3, 0)


def test_a_run_superseded_by_a_later_success_never_fires_after_the_clock_steps_back() -> None:
    # Catch-up fired 03:00's run at 03:10 and it succeeded; the wall clock then steps back
    # to 02:40, where the 02:30 run (never done) would look due.
    schedule = _schedule("02:00-04:00", every=timedelta(minutes=30))
    chosen = next_fire(schedule, _utc(2027, 1, 5, 2, 40), _utc(2027, 1, 5, 3, 0))
    assert chosen is not None
    assert chosen.run.due == _utc(2027, 1, 5, 3, 30)
    assert chosen.at == _utc(2027, 1, 5, 3, 30)


# -- servers that can never run ---------------------------------------------------------------


def test_a_server_whose_every_window_is_blacked_out_never_runs_and_says_why() -> None:
    schedule = _schedule("mon-fri 02:00-04:00", blackouts=("mon-fri 00:00-12:00",))
    why = never_runs(schedule, _utc(2027, 1, 5, 3, 0))
    assert why == "every window in the next 400 days falls in a blackout"


def test_a_blackout_longer_than_the_horizon_means_no_run_within_it() -> None:
    now = _utc(2027, 1, 5, 3, 0)
    schedule = _schedule("02:00-04:00", blackouts=("2027-01-01T00:00/2028-06-01T00:00",))
    assert never_runs(schedule, now) is not None
    assert next_fire(schedule, now, None) is None


def test_a_blackout_ending_inside_the_horizon_leaves_the_server_running() -> None:
    schedule = _schedule("02:00-04:00", blackouts=("2027-01-01T00:00/2027-12-01T00:00",))
    assert never_runs(schedule, _utc(2027, 1, 5, 3, 0)) is None


def test_one_open_instant_in_a_slot_is_enough_to_run_whatever_the_spread() -> None:
    # The run moves to the end of the blackout, inside the slot.
    schedule = _schedule("02:00-04:00", blackouts=("00:00-03:59",), every=timedelta(minutes=10))
    assert never_runs(schedule, _utc(2027, 1, 5, 5, 0)) is None


def test_an_unplanned_server_is_planned_again_once_the_horizon_has_passed() -> None:
    # Nothing lies within HORIZON of `not_before`: the first possible run is at or after its
    # end, so planning again there misses nothing, and it sees a blackout's end beyond it.
    now = _utc(2027, 1, 5, 3, 0)
    schedule = _schedule("02:00-04:00", blackouts=("2027-01-01T00:00/2028-06-01T00:00",))
    again = look_again_at(now)
    assert again == now + HORIZON
    chosen = next_fire(schedule, again, None)
    assert chosen is not None
    assert chosen.run.due == _utc(2028, 6, 1, 2, 0)


@pytest.mark.parametrize(
    ("windows", "blackouts", "gap"),
    [
        (("02:00-04:00",), (), timedelta(days=1, hours=2)),
        (("sun 03:00-05:00",), (), timedelta(days=7, hours=2)),
        (("mon-fri 02:00-04:00",), (), timedelta(days=3, hours=2)),  # over the weekend
        (("02:00-04:00",), ("2027-01-10T00:00/2027-01-13T00:00",), timedelta(days=4, hours=2)),
        (("02:00-04:00",), ("2000-01-01T00:00/2999-01-01T00:00",), None),  # nothing planned
    ],
)
def test_the_success_gap_is_the_longest_from_a_slot_start_to_the_next_slot_end(
    windows: tuple[str, ...], blackouts: tuple[str, ...], gap: timedelta | None
) -> None:
    now = _utc(2027, 1, 5, 12, 0)  # the blackout above lies ahead: seen
    assert success_gap(_schedule(*windows, blackouts=blackouts), now) == gap


def test_the_success_gap_still_sees_a_blackout_that_has_begun() -> None:
    schedule = _schedule("02:00-04:00", blackouts=("2027-01-10T00:00/2027-01-13T00:00",))
    assert success_gap(schedule, _utc(2027, 1, 12, 12, 0)) == timedelta(days=4, hours=2)

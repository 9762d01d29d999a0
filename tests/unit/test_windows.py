"""Window syntax and slot arithmetic: parsing, DST days, merging, runs, blackouts, spread."""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refreshd.core.runs import (
    HORIZON,
    next_runs,
    run_after,
    run_at_or_before,
    run_from,
    runs_of,
)
from refreshd.core.slots import (
    Run,
    Schedule,
    Slot,
    in_blackout,
    open_until,
    slot_at,
    slots_between,
    spread_offset,
)
from refreshd.core.windows import (
    AbsoluteWindow,
    WeeklyWindow,
    WindowError,
    parse_blackout_window,
    parse_window,
)

UTC = dt.UTC
NEW_YORK = "America/New_York"
LONDON = "Europe/London"
SYDNEY = "Australia/Sydney"
ALL_DAYS = frozenset(range(7))


def utc(text: str) -> dt.datetime:
    """An explicit UTC instant: utc('2027-03-14 07:00')."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def schedule(
    zone: str,
    windows: list[str],
    blackouts: list[str] | None = None,
    every: dt.timedelta | None = None,
    offset: dt.timedelta = dt.timedelta(0),
) -> Schedule:
    return Schedule(
        name="east-1",
        tz=ZoneInfo(zone),
        windows=tuple(parse_window(w) for w in windows),
        blackouts=tuple(parse_blackout_window(b) for b in blackouts or []),
        every=every,
        offset=offset,
    )


def slot(start: str, end: str) -> Slot:
    return Slot(start=utc(start), end=utc(end))


def dues(runs: list[Run]) -> list[dt.datetime]:
    return [run.due for run in runs]


# --- parsing --------------------------------------------------------------------------------

T = dt.time


@pytest.mark.parametrize(
    ("text", "days", "start", "end"),
    [
        ("02:00-04:00", ALL_DAYS, T(2), T(4)),
        ("2:00-4:30", ALL_DAYS, T(2), T(4, 30)),
        ("mon 02:00-04:00", {0}, T(2), T(4)),
        ("sun 02:00-04:00", {6}, T(2), T(4)),
        ("mon-fri 02:00-04:00", {0, 1, 2, 3, 4}, T(2), T(4)),
        ("sat,sun 01:00-06:00", {5, 6}, T(1), T(6)),
        ("mon-wed,fri 02:00-04:00", {0, 1, 2, 4}, T(2), T(4)),
        ("fri-mon 22:00-02:00", {4, 5, 6, 0}, T(22), T(2)),
        ("sun-sun 02:00-04:00", {6}, T(2), T(4)),
        ("mon-sun 02:00-04:00", ALL_DAYS, T(2), T(4)),
        ("  MON-Fri  02:00-04:00\n", {0, 1, 2, 3, 4}, T(2), T(4)),
        ("sat , sun 02:00 - 04:00", {5, 6}, T(2), T(4)),
        ("22:00-24:00", ALL_DAYS, T(22), T(0)),
        ("00:00-24:00", ALL_DAYS, T(0), T(0)),
        ("03:00-03:00", ALL_DAYS, T(3), T(3)),
        ("23:59-00:01", ALL_DAYS, T(23, 59), T(0, 1)),
    ],
)
def test_parse_window_accepts_each_form(
    text: str, days: set[int], start: dt.time, end: dt.time
) -> None:
    assert parse_window(text) == WeeklyWindow(frozenset(days), start, end, text)


def test_parse_window_keeps_the_text_as_written_for_messages() -> None:
    assert parse_window(" Sat,Sun 01:00-06:00 ").text == " Sat,Sun 01:00-06:00 "


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty window: write HH:MM-HH:MM"),
        ("   ", "empty window"),
        ("tues 02:00-04:00", "unknown day 'tues': use mon..sun, ranges like mon-fri"),
        ("monday 02:00-04:00", "unknown day 'monday'"),
        ("mon fri 02:00-04:00", "unknown day 'mon fri'"),
        ("mon-xyz 02:00-04:00", "unknown day 'xyz'"),
        ("mon- 02:00-04:00", "incomplete day range 'mon-'"),
        ("-fri 02:00-04:00", "incomplete day range '-fri'"),
        ("mon-tue-wed 02:00-04:00", "incomplete day range 'mon-tue-wed'"),
        ("sat,,sun 02:00-04:00", "empty day in 'sat,,sun'"),
        ("sat, 02:00-04:00", "empty day"),
        ("mon-fri", "missing times in 'mon-fri'"),
        ("02:00", "missing '-' between start and end"),
        ("02:00 04:00", "missing '-' between start and end"),
        ("02:00-", "missing end time"),
        ("-04:00", "missing start time"),
        ("02:00-03:00-04:00", "expected one start and one end"),
        ("02:00-04:00 mon", "unexpected 'mon' after the times: days go first"),
        ("25:00-03:00", "hour 25 out of range in '25:00'"),
        ("02:00-99:00", "hour 99 out of range"),
        ("02:60-03:00", "minute 60 out of range in '02:60'"),
        ("24:00-02:00", "a window cannot start at 24:00: start it at 00:00"),
        ("22:00-24:30", "hour 24 out of range in '24:30'"),
        ("2pm-4pm", "bad time '2pm': use 24-hour HH:MM"),
        ("0200-0400", "bad time '0200'"),
        ("02:00:00:00-04:00", "bad time '02:00:00:00'"),
        ("02.00-04.00", "bad time '02.00'"),
        ("٠٢:٠٠-٠٤:٠٠", "missing times"),
    ],
)
def test_parse_window_rejects_malformed_text_saying_what_to_write(text: str, message: str) -> None:
    with pytest.raises(WindowError) as caught:
        parse_window(text)
    assert message in str(caught.value)


def test_window_error_is_a_value_error_so_validators_report_it() -> None:
    assert issubclass(WindowError, ValueError)


def test_parse_blackout_window_accepts_weekly_forms() -> None:
    assert parse_blackout_window("mon-fri 09:00-17:00") == parse_window("mon-fri 09:00-17:00")


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        (
            "2026-12-24T00:00/2026-12-27T00:00",
            dt.datetime(2026, 12, 24),
            dt.datetime(2026, 12, 27),
        ),
        (
            " 2026-12-24 / 2026-12-25T06:30 ",
            dt.datetime(2026, 12, 24),
            dt.datetime(2026, 12, 25, 6, 30),
        ),
        (
            "2026-12-24T00:00+01:00/2026-12-24T00:00Z",
            dt.datetime(2026, 12, 24, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            dt.datetime(2026, 12, 24, tzinfo=UTC),
        ),
    ],
)
def test_parse_blackout_window_accepts_absolute_start_end(
    text: str, start: dt.datetime, end: dt.datetime
) -> None:
    assert parse_blackout_window(text) == AbsoluteWindow(start, end, text)


def test_absolute_blackout_keeps_the_offset_it_was_given() -> None:
    parsed = parse_blackout_window("2026-12-24T00:00-05:00/2026-12-24T06:00-05:00")
    assert isinstance(parsed, AbsoluteWindow)
    assert parsed.start.utcoffset() == dt.timedelta(hours=-5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-12-24T00:00", "needs an end: write START/END"),
        ("2026-12-24T00:00/", "missing end of the blackout"),
        ("/2026-12-24T00:00", "missing start of the blackout"),
        ("2026-12-24/2026-12-25/2026-12-26", "expected exactly one '/'"),
        ("christmas/2026-12-25", "bad start date-time 'christmas'"),
        ("2026-12-24/2026-13-01", "bad end date-time '2026-13-01'"),
        ("2026-12-27T00:00/2026-12-24T00:00", "does not end after it starts"),
        ("2026-12-24T00:00/2026-12-24T00:00", "does not end after it starts"),
        ("2026-12-24T00:00Z/2026-12-27T00:00", "UTC offset on one side only"),
        ("2026-12-24T00:00/2026-12-27T00:00+02:00", "UTC offset on one side only"),
        ("0001-01-01/2026-01-01", "start year 1 is out of range"),
        ("2026-01-01/9999-12-31", "end year 9999 is out of range"),
        ("tues 09:00-17:00", "unknown day 'tues'"),
        ("", "empty window"),
    ],
)
def test_parse_blackout_window_rejects_malformed_text_saying_what_to_write(
    text: str, message: str
) -> None:
    with pytest.raises(WindowError) as caught:
        parse_blackout_window(text)
    assert message in str(caught.value)


WINDOWISH = st.text(alphabet=st.sampled_from(list("0123456789:-/ ,.TZ+monthuwedfrisatsun\t")))


@settings(max_examples=500)
@given(st.one_of(st.text(), WINDOWISH))
def test_parsers_raise_nothing_but_window_error(text: str) -> None:
    for parse in (parse_window, parse_blackout_window):
        with contextlib.suppress(WindowError):
            parse(text)


@settings(max_examples=300)
@given(
    days=st.sets(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1),
    start=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
    end=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
)
def test_parse_window_reads_back_any_well_formed_window(
    days: set[str], start: dt.time, end: dt.time
) -> None:
    text = f"{','.join(sorted(days))} {start:%H:%M}-{end:%H:%M}"
    names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert parse_window(text) == WeeklyWindow(
        frozenset(names.index(d) for d in days), start, end, text
    )


# --- slots on DST days -----------------------------------------------------------------------
# Each case lists every slot overlapping the UTC range, so a missing or doubled slot shows.
# America/New_York: 2027-03-14 02:00 EST -> 03:00 EDT at 07:00Z; 2027-11-07 02:00 EDT -> 01:00
# EST at 06:00Z. Europe/London: 2027-03-28 01:00 -> 02:00 at 01:00Z; 2027-10-31 02:00 -> 01:00
# at 01:00Z. Australia/Sydney: 2027-04-04 03:00 -> 02:00 at 16:00Z on the 3rd; 2027-10-03
# 02:00 -> 03:00 at 16:00Z on the 2nd.


@pytest.mark.parametrize(
    ("zone", "window", "range_start", "range_end", "expected"),
    [
        # spring forward, New York
        pytest.param(
            NEW_YORK, "02:30-03:30", "2027-03-14 05:00", "2027-03-15 04:00",
            [slot("2027-03-14 07:00", "2027-03-14 07:30")],
            id="ny-spring-start-in-gap-moves-to-gap-end",
        ),
        pytest.param(
            NEW_YORK, "01:30-02:30", "2027-03-14 05:00", "2027-03-15 04:00",
            [slot("2027-03-14 06:30", "2027-03-14 07:00")],
            id="ny-spring-end-in-gap-moves-to-gap-end",
        ),
        pytest.param(
            NEW_YORK, "01:00-03:00", "2027-03-14 05:00", "2027-03-15 04:00",
            [slot("2027-03-14 06:00", "2027-03-14 07:00")],
            id="ny-spring-window-spanning-gap-is-an-hour-shorter",
        ),
        pytest.param(
            NEW_YORK, "23:00-01:30", "2027-03-14 00:00", "2027-03-14 12:00",
            [slot("2027-03-14 04:00", "2027-03-14 06:30")],
            id="ny-spring-across-midnight-before-gap",
        ),
        pytest.param(
            NEW_YORK, "22:00-02:30", "2027-03-14 00:00", "2027-03-14 12:00",
            [slot("2027-03-14 03:00", "2027-03-14 07:00")],
            id="ny-spring-across-midnight-ending-in-gap",
        ),
        pytest.param(
            NEW_YORK, "02:00-02:30", "2027-03-14 05:00", "2027-03-15 04:00",
            [],
            id="ny-spring-window-wholly-in-gap-has-no-slot",
        ),
        pytest.param(
            NEW_YORK, "02:30-03:30", "2027-03-13 00:00", "2027-03-16 00:00",
            [
                slot("2027-03-13 07:30", "2027-03-13 08:30"),
                slot("2027-03-14 07:00", "2027-03-14 07:30"),
                slot("2027-03-15 06:30", "2027-03-15 07:30"),
            ],
            id="ny-spring-days-around-keep-their-wall-times",
        ),
        # fall back, New York
        pytest.param(
            NEW_YORK, "02:30-03:30", "2027-11-07 04:00", "2027-11-08 05:00",
            [slot("2027-11-07 07:30", "2027-11-07 08:30")],
            id="ny-fall-window-after-repeat-unchanged",
        ),
        pytest.param(
            NEW_YORK, "01:30-02:30", "2027-11-07 04:00", "2027-11-08 05:00",
            [slot("2027-11-07 05:30", "2027-11-07 07:30")],
            id="ny-fall-ambiguous-start-takes-first-reading-one-slot",
        ),
        pytest.param(
            NEW_YORK, "01:00-03:00", "2027-11-07 04:00", "2027-11-08 05:00",
            [slot("2027-11-07 05:00", "2027-11-07 08:00")],
            id="ny-fall-window-spanning-repeat-is-an-hour-longer",
        ),
        pytest.param(
            NEW_YORK, "01:15-01:45", "2027-11-07 04:00", "2027-11-08 05:00",
            [slot("2027-11-07 05:15", "2027-11-07 06:45")],
            id="ny-fall-window-inside-repeat-covers-both-readings-as-one-slot",
        ),
        pytest.param(
            NEW_YORK, "23:00-01:30", "2027-11-07 00:00", "2027-11-07 12:00",
            [slot("2027-11-07 03:00", "2027-11-07 06:30")],
            id="ny-fall-across-midnight-ambiguous-end-takes-later-reading",
        ),
        pytest.param(
            NEW_YORK, "01:30-02:30", "2027-11-06 00:00", "2027-11-09 00:00",
            [
                slot("2027-11-06 05:30", "2027-11-06 06:30"),
                slot("2027-11-07 05:30", "2027-11-07 07:30"),
                slot("2027-11-08 06:30", "2027-11-08 07:30"),
            ],
            id="ny-fall-days-around-keep-their-wall-times",
        ),
        # Europe/London
        pytest.param(
            LONDON, "01:30-02:30", "2027-03-27 23:00", "2027-03-28 23:00",
            [slot("2027-03-28 01:00", "2027-03-28 01:30")],
            id="london-spring-start-in-gap",
        ),
        pytest.param(
            LONDON, "00:30-03:00", "2027-03-27 23:00", "2027-03-28 23:00",
            [slot("2027-03-28 00:30", "2027-03-28 02:00")],
            id="london-spring-window-spanning-gap",
        ),
        pytest.param(
            LONDON, "01:30-02:30", "2027-10-30 23:00", "2027-10-31 23:00",
            [slot("2027-10-31 00:30", "2027-10-31 02:30")],
            id="london-fall-ambiguous-start-one-slot",
        ),
        pytest.param(
            LONDON, "22:00-01:30", "2027-10-30 12:00", "2027-10-31 12:00",
            [slot("2027-10-30 21:00", "2027-10-31 01:30")],
            id="london-fall-across-midnight-ambiguous-end-takes-later-reading",
        ),
        # Australia/Sydney
        pytest.param(
            SYDNEY, "02:30-03:30", "2027-04-03 12:00", "2027-04-04 12:00",
            [slot("2027-04-03 15:30", "2027-04-03 17:30")],
            id="sydney-back-ambiguous-start-and-end-one-slot",
        ),
        pytest.param(
            SYDNEY, "02:30-03:30", "2027-10-02 12:00", "2027-10-03 12:00",
            [slot("2027-10-02 16:00", "2027-10-02 16:30")],
            id="sydney-forward-start-in-gap",
        ),
        pytest.param(
            SYDNEY, "sat 23:00-02:30", "2027-10-02 00:00", "2027-10-03 00:00",
            [slot("2027-10-02 13:00", "2027-10-02 16:00")],
            id="sydney-forward-across-midnight-ending-in-gap",
        ),
    ],
)  # fmt: skip
def test_slots_on_dst_days(
    zone: str, window: str, range_start: str, range_end: str, expected: list[Slot]
) -> None:
    assert slots_between(schedule(zone, [window]), utc(range_start), utc(range_end)) == expected


def test_daily_0130_runs_once_on_fall_back_day_unlike_cron() -> None:
    # APScheduler's CronTrigger fires this twice on 2027-11-07 (SPEC.md).
    runs = next_runs(schedule(NEW_YORK, ["01:30-02:00"]), utc("2027-11-06 00:00"), 3)
    assert dues(runs) == [utc("2027-11-06 05:30"), utc("2027-11-07 05:30"), utc("2027-11-08 06:30")]


def test_daily_0230_runs_at_gap_end_on_spring_forward_day_unlike_cron() -> None:
    # APScheduler's CronTrigger moves this to 03:30 local on 2027-03-14 (SPEC.md).
    runs = next_runs(schedule(NEW_YORK, ["02:30-04:00"]), utc("2027-03-13 00:00"), 3)
    assert dues(runs) == [utc("2027-03-13 07:30"), utc("2027-03-14 07:00"), utc("2027-03-15 06:30")]


# --- slots: days, midnight, merging ----------------------------------------------------------
# 2027-01-01 is a Friday; January is EST (UTC-5) in New York.


def test_window_across_midnight_ends_the_next_day() -> None:
    found = slots_between(
        schedule(NEW_YORK, ["fri 22:00-02:00"]), utc("2026-12-28 00:00"), utc("2027-01-11 00:00")
    )
    assert found == [
        slot("2027-01-02 03:00", "2027-01-02 07:00"),
        slot("2027-01-09 03:00", "2027-01-09 07:00"),
    ]


def test_days_name_the_day_a_window_starts_on() -> None:
    found = slots_between(
        schedule("UTC", ["sat,sun 23:00-01:00"]), utc("2027-01-01 00:00"), utc("2027-01-05 00:00")
    )
    assert found == [
        slot("2027-01-02 23:00", "2027-01-03 01:00"),
        slot("2027-01-03 23:00", "2027-01-04 01:00"),
    ]


def test_wrapping_day_range_covers_the_weekend() -> None:
    found = slots_between(
        schedule("UTC", ["fri-mon 02:00-03:00"]), utc("2027-01-01 00:00"), utc("2027-01-08 00:00")
    )
    assert [s.start.date() for s in found] == [
        dt.date(2027, 1, 1),
        dt.date(2027, 1, 2),
        dt.date(2027, 1, 3),
        dt.date(2027, 1, 4),
    ]


def test_overlapping_windows_on_the_same_day_merge_into_one_slot() -> None:
    found = slots_between(
        schedule("UTC", ["fri 02:00-04:00", "fri 03:00-05:00"]),
        utc("2027-01-01 00:00"),
        utc("2027-01-02 00:00"),
    )
    assert found == [slot("2027-01-01 02:00", "2027-01-01 05:00")]


def test_touching_windows_on_the_same_day_merge_into_one_slot() -> None:
    found = slots_between(
        schedule("UTC", ["02:00-03:00", "03:00-04:00"]),
        utc("2027-01-01 00:00"),
        utc("2027-01-02 00:00"),
    )
    assert found == [slot("2027-01-01 02:00", "2027-01-01 04:00")]


def test_separate_windows_on_the_same_day_are_separate_slots() -> None:
    found = slots_between(
        schedule("UTC", ["14:00-15:00", "02:00-03:00"]),
        utc("2027-01-01 00:00"),
        utc("2027-01-02 00:00"),
    )
    assert found == [
        slot("2027-01-01 02:00", "2027-01-01 03:00"),
        slot("2027-01-01 14:00", "2027-01-01 15:00"),
    ]


def test_all_day_window_gives_one_slot_per_day_not_one_endless_slot() -> None:
    found = slots_between(
        schedule("UTC", ["00:00-24:00"]), utc("2027-01-01 00:00"), utc("2027-01-04 00:00")
    )
    assert found == [
        slot("2027-01-01 00:00", "2027-01-02 00:00"),
        slot("2027-01-02 00:00", "2027-01-03 00:00"),
        slot("2027-01-03 00:00", "2027-01-04 00:00"),
    ]


def test_window_running_into_the_next_days_window_ends_where_that_one_starts() -> None:
    found = slots_between(
        schedule("UTC", ["fri 20:00-04:00", "sat 02:00-06:00"]),
        utc("2027-01-01 00:00"),
        utc("2027-01-03 00:00"),
    )
    assert found == [
        slot("2027-01-01 20:00", "2027-01-02 02:00"),
        slot("2027-01-02 02:00", "2027-01-02 06:00"),
    ]


def test_next_days_window_inside_a_long_one_carries_on_to_its_end() -> None:
    found = slots_between(
        schedule("UTC", ["fri 20:00-06:00", "sat 02:00-03:00"]),
        utc("2027-01-01 00:00"),
        utc("2027-01-03 00:00"),
    )
    assert found == [
        slot("2027-01-01 20:00", "2027-01-02 02:00"),
        slot("2027-01-02 02:00", "2027-01-02 06:00"),
    ]


def test_24h_window_on_fall_back_day_ends_where_the_next_day_starts() -> None:
    found = slots_between(
        schedule(NEW_YORK, ["01:30-01:30"]), utc("2027-11-06 12:00"), utc("2027-11-07 12:00")
    )
    assert found == [
        slot("2027-11-06 05:30", "2027-11-07 05:30"),
        slot("2027-11-07 05:30", "2027-11-08 06:30"),
    ]


def test_slots_between_includes_a_slot_that_started_before_the_range() -> None:
    found = slots_between(
        schedule("UTC", ["02:00-04:00"]), utc("2027-01-01 03:00"), utc("2027-01-01 03:30")
    )
    assert found == [slot("2027-01-01 02:00", "2027-01-01 04:00")]


def test_slots_between_excludes_a_slot_ending_at_the_range_start() -> None:
    found = slots_between(
        schedule("UTC", ["02:00-04:00"]), utc("2027-01-01 04:00"), utc("2027-01-01 05:00")
    )
    assert found == []


def test_slots_between_of_an_empty_range_is_empty() -> None:
    sched = schedule("UTC", ["02:00-04:00"])
    assert slots_between(sched, utc("2027-01-01 03:00"), utc("2027-01-01 03:00")) == []


def test_slots_between_returns_utc() -> None:
    found = slots_between(
        schedule(SYDNEY, ["02:00-04:00"]), utc("2027-01-01 00:00"), utc("2027-01-02 00:00")
    )
    assert found
    assert all(s.start.tzinfo is UTC and s.end.tzinfo is UTC for s in found)


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2027-01-01 02:00", slot("2027-01-01 02:00", "2027-01-01 04:00")),
        ("2027-01-01 03:59:59.999999", slot("2027-01-01 02:00", "2027-01-01 04:00")),
        ("2027-01-01 04:00", None),
        ("2027-01-01 01:59:59", None),
        ("2027-01-01 12:00", None),
    ],
)
def test_slot_at_includes_the_start_and_excludes_the_end(
    instant: str, expected: Slot | None
) -> None:
    assert slot_at(schedule("UTC", ["02:00-04:00"]), utc(instant)) == expected


def test_slot_at_accepts_any_aware_instant() -> None:
    eastern = dt.datetime(2027, 1, 1, 2, 30, tzinfo=ZoneInfo(NEW_YORK))
    assert slot_at(schedule(NEW_YORK, ["02:00-04:00"]), eastern) == slot(
        "2027-01-01 07:00", "2027-01-01 09:00"
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda s: slots_between(s, dt.datetime(2027, 1, 1), utc("2027-01-02 00:00")),
        lambda s: slot_at(s, dt.datetime(2027, 1, 1)),
        lambda s: in_blackout(s, dt.datetime(2027, 1, 1)),
        lambda s: next_runs(s, dt.datetime(2027, 1, 1), 1),
        lambda s: open_until(s, dt.datetime(2027, 1, 1)),
    ],
)
def test_naive_instants_are_refused(call: object) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        call(schedule("UTC", ["02:00-04:00"]))  # type: ignore[operator]


def test_schedule_refuses_a_repeat_under_a_second() -> None:
    with pytest.raises(ValueError, match="every must be at least"):
        schedule("UTC", ["02:00-04:00"], every=dt.timedelta(milliseconds=10))


def test_schedule_refuses_a_negative_offset() -> None:
    with pytest.raises(ValueError, match="offset must not be negative"):
        schedule("UTC", ["02:00-04:00"], offset=dt.timedelta(seconds=-1))


# --- runs inside a slot ----------------------------------------------------------------------

SLOT_2_TO_5 = slot("2027-01-01 02:00", "2027-01-01 05:00")
MINUTES = dt.timedelta(minutes=1)


@pytest.mark.parametrize(
    ("every", "offset", "expected"),
    [
        (None, 0, ["02:00"]),
        (None, 25, ["02:25"]),
        (None, 179, ["04:59"]),
        (None, 180, ["02:00"]),  # offset as long as the slot wraps around
        (None, 200, ["02:20"]),
        (60, 0, ["02:00", "03:00", "04:00"]),
        (60, 10, ["02:10", "03:10", "04:10"]),
        (90, 0, ["02:00", "03:30"]),
        (45, 30, ["02:30", "03:15", "04:00", "04:45"]),
        (240, 0, ["02:00"]),
    ],
)
def test_runs_of_a_slot_start_at_the_offset_and_repeat_every(
    every: int | None, offset: int, expected: list[str]
) -> None:
    sched = schedule(
        "UTC",
        ["02:00-05:00"],
        every=None if every is None else every * MINUTES,
        offset=offset * MINUTES,
    )
    assert runs_of(sched, SLOT_2_TO_5) == [
        Run(SLOT_2_TO_5, utc(f"2027-01-01 {hhmm}")) for hhmm in expected
    ]


@pytest.mark.parametrize(
    ("blackout", "every", "offset", "expected"),
    [
        pytest.param("02:00-02:30", None, 0, ["02:30"], id="moved-to-blackout-end"),
        pytest.param("01:00-02:30", None, 0, ["02:30"], id="blackout-starting-before-slot"),
        pytest.param("03:00-04:00", None, 0, ["02:00"], id="blackout-elsewhere-in-slot"),
        pytest.param("02:10-03:20", 30, 0, ["02:00", "03:20", "03:30", "04:00", "04:30"],
                     id="moved-run-colliding-with-next-is-dropped"),
        pytest.param("03:30-06:00", 60, 0, ["02:00", "03:00"],
                     id="run-moved-past-slot-end-dropped"),
        pytest.param("03:00-06:00", None, 90, ["02:00"],
                     id="slot-keeps-one-run-when-offset-lands-in-blackout-to-its-end"),
        pytest.param("02:00-04:30", None, 0, ["04:30"], id="only-open-tail-is-used"),
        pytest.param("01:00-06:00", 60, 0, [], id="blackout-covering-slot-leaves-no-run"),
        pytest.param("fri 02:00-03:00", None, 0, ["03:00"], id="weekly-blackout-on-its-day"),
        pytest.param("sat 02:00-03:00", None, 0, ["02:00"], id="weekly-blackout-off-its-day"),
        pytest.param("thu 23:00-02:30", None, 0, ["02:30"], id="weekly-blackout-across-midnight"),
        pytest.param("2027-01-01T01:00/2027-01-01T03:10", None, 0, ["03:10"], id="absolute-naive"),
        pytest.param("2027-01-01T01:00Z/2027-01-01T03:10Z", None, 0, ["03:10"],
                     id="absolute-aware"),
        pytest.param("2027-01-02T01:00/2027-01-02T03:10", None, 0, ["02:00"],
                     id="absolute-another-day"),
        pytest.param("02:00-02:30", 30, 0, ["02:30", "03:00", "03:30", "04:00", "04:30"],
                     id="moved-run-equal-to-next-is-dropped"),
    ],
)  # fmt: skip
def test_blackouts_cut_runs(
    blackout: str, every: int | None, offset: int, expected: list[str]
) -> None:
    sched = schedule(
        "UTC",
        ["02:00-05:00"],
        blackouts=[blackout],
        every=None if every is None else every * MINUTES,
        offset=offset * MINUTES,
    )
    assert dues(runs_of(sched, SLOT_2_TO_5)) == [utc(f"2027-01-01 {t}") for t in expected]
    assert_lookups_agree_with_runs_of(sched, SLOT_2_TO_5, step=dt.timedelta(minutes=5))


def assert_lookups_agree_with_runs_of(sched: Schedule, s: Slot, step: dt.timedelta) -> None:
    """run_at_or_before / run_from / run_after give what listing `runs_of` gives: at every
    `step` across the slot and a little beyond, and at each due and a tick either side."""
    listed = runs_of(sched, s)
    tick = dt.timedelta(microseconds=1)
    probes = [s.start - step + n * step for n in range((s.end - s.start) // step + 3)]
    probes += [run.due + d for run in listed for d in (-tick, dt.timedelta(0), tick)]
    due = [run.due for run in listed]
    for instant in probes:
        before = bisect.bisect_right(due, instant)  # runs due at or before instant
        assert run_at_or_before(sched, s, instant) == (listed[before - 1] if before else None)
        first = bisect.bisect_left(due, instant)  # the first run due at or after instant
        assert run_from(sched, s, instant) == (listed[first] if first < len(listed) else None)
    for index, run in enumerate(listed):
        assert run_after(sched, run) == (listed[index + 1] if index + 1 < len(listed) else None)


@pytest.mark.parametrize(
    ("blackouts", "every_seconds", "expected_count"),
    [
        pytest.param(["02:30-04:30"], 1, 3600, id="long-blackout-in-a-1s-slot"),
        pytest.param(["01:00-04:59:30"], 1, 30, id="open-tail-only"),
        pytest.param(["01:00-06:00"], 1, 0, id="all-dark"),
        pytest.param(["03:00-06:00"], 7, 515, id="blackout-to-the-end"),
        pytest.param(["02:00:00-02:00:03", "02:00:05-02:00:09"], 7, 1543, id="short-blackouts"),
    ],
)  # fmt: skip
def test_run_lookups_step_over_blackouts_in_slots_of_thousands_of_runs(
    blackouts: list[str], every_seconds: int, expected_count: int
) -> None:
    sched = schedule(
        "UTC", ["02:00-05:00"], blackouts=blackouts, every=dt.timedelta(seconds=every_seconds)
    )
    assert len(runs_of(sched, SLOT_2_TO_5)) == expected_count
    assert_lookups_agree_with_runs_of(sched, SLOT_2_TO_5, step=dt.timedelta(seconds=61))


def test_run_after_the_only_run_of_a_slot_left_by_a_blackout_is_none() -> None:
    # Every nominal due lies in a blackout reaching past the slot: the one run is at the
    # slot's first open instant, before the offset's nominal due.
    sched = schedule("UTC", ["02:00-05:00"], blackouts=["03:00-06:00"], offset=90 * MINUTES)
    (only,) = runs_of(sched, SLOT_2_TO_5)
    assert only.due == utc("2027-01-01 02:00")
    assert run_after(sched, only) is None
    assert run_from(sched, SLOT_2_TO_5, utc("2027-01-01 01:00")) == only
    assert run_at_or_before(sched, SLOT_2_TO_5, utc("2027-01-01 04:00")) == only
    assert run_from(sched, SLOT_2_TO_5, utc("2027-01-01 02:00:01")) is None


def test_naive_absolute_blackout_is_wall_clock_in_the_servers_zone() -> None:
    # 2027-01-05 02:00-03:00 in New York is 07:00Z-08:00Z.
    sched = schedule(NEW_YORK, ["02:00-04:00"], blackouts=["2027-01-05T02:00/2027-01-05T03:00"])
    runs = next_runs(sched, utc("2027-01-04 00:00"), 3)
    assert dues(runs) == [utc("2027-01-04 07:00"), utc("2027-01-05 08:00"), utc("2027-01-06 07:00")]


def test_aware_absolute_blackout_is_those_instants_whatever_the_servers_zone() -> None:
    sched = schedule(
        NEW_YORK, ["02:00-04:00"], blackouts=["2027-01-05T02:00+00:00/2027-01-05T07:45+00:00"]
    )
    runs = next_runs(sched, utc("2027-01-05 00:00"), 1)
    assert dues(runs) == [utc("2027-01-05 07:45")]


def test_weekly_blackout_is_wall_clock_in_the_servers_zone() -> None:
    # Sydney is UTC+11 in January: 02:00-03:00 local is 15:00Z-16:00Z the day before.
    sched = schedule(SYDNEY, ["02:00-04:00"], blackouts=["02:00-03:00"])
    assert dues(next_runs(sched, utc("2027-01-04 00:00"), 1)) == [utc("2027-01-04 16:00")]


def test_weekly_blackout_on_fall_back_day_covers_both_readings() -> None:
    sched = schedule(NEW_YORK, ["00:00-04:00"], blackouts=["01:00-02:00"])
    assert in_blackout(sched, utc("2027-11-07 05:30"))  # 01:30 EDT
    assert in_blackout(sched, utc("2027-11-07 06:30"))  # 01:30 EST
    assert not in_blackout(sched, utc("2027-11-07 07:00"))  # 02:00 EST


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2027-01-01 08:59", False),
        ("2027-01-01 09:00", True),
        ("2027-01-01 16:59", True),
        ("2027-01-01 17:00", False),
        ("2027-01-02 12:00", False),  # a Saturday
        ("2026-12-25 12:00", True),  # absolute, a Friday anyway
        ("2026-12-26 12:00", True),  # absolute, a Saturday
        ("2026-12-27 00:00", False),  # absolute end is exclusive
    ],
)
def test_in_blackout(instant: str, expected: bool) -> None:
    sched = schedule(
        "UTC", ["02:00-04:00"], blackouts=["mon-fri 09:00-17:00", "2026-12-24/2026-12-27"]
    )
    assert in_blackout(sched, utc(instant)) is expected


def test_touching_blackouts_move_a_run_past_both() -> None:
    sched = schedule("UTC", ["02:00-05:00"], blackouts=["02:00-03:00", "03:00-03:30"])
    assert dues(runs_of(sched, SLOT_2_TO_5)) == [utc("2027-01-01 03:30")]


def test_a_slot_of_no_length_has_no_runs() -> None:
    empty = slot("2027-01-01 02:00", "2027-01-01 02:00")
    assert runs_of(schedule("UTC", ["02:00-05:00"]), empty) == []


# --- next_runs -------------------------------------------------------------------------------


def test_next_runs_includes_later_runs_of_the_slot_containing_after() -> None:
    sched = schedule("UTC", ["02:00-05:00"], every=dt.timedelta(hours=1))
    assert dues(next_runs(sched, utc("2027-01-01 02:30"), 3)) == [
        utc("2027-01-01 03:00"),
        utc("2027-01-01 04:00"),
        utc("2027-01-02 02:00"),
    ]


def test_next_runs_includes_a_run_due_exactly_at_after() -> None:
    sched = schedule("UTC", ["02:00-05:00"])
    assert dues(next_runs(sched, utc("2027-01-01 02:00"), 1)) == [utc("2027-01-01 02:00")]


def test_next_runs_after_a_slots_only_run_waits_for_the_next_slot() -> None:
    sched = schedule("UTC", ["02:00-05:00"], offset=dt.timedelta(minutes=5))
    assert dues(next_runs(sched, utc("2027-01-01 02:06"), 1)) == [utc("2027-01-02 02:05")]


def test_next_runs_gives_each_slot_once_across_search_steps() -> None:
    sched = schedule("UTC", ["22:00-02:00"])
    runs = next_runs(sched, utc("2027-01-01 00:00"), 40)
    assert dues(runs) == [utc("2027-01-01 22:00") + dt.timedelta(days=n) for n in range(40)]


def test_next_runs_of_a_weekly_window() -> None:
    sched = schedule("UTC", ["sun 03:00-04:00"])
    assert dues(next_runs(sched, utc("2027-01-01 00:00"), 2)) == [
        utc("2027-01-03 03:00"),
        utc("2027-01-10 03:00"),
    ]


def test_next_runs_of_zero_is_empty() -> None:
    assert next_runs(schedule("UTC", ["02:00-04:00"]), utc("2027-01-01 00:00"), 0) == []


def test_next_runs_of_a_schedule_without_windows_is_empty() -> None:
    assert next_runs(schedule("UTC", []), utc("2027-01-01 00:00"), 3) == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "blackouts",
    [
        ["00:00-00:00"],
        ["mon-sun 00:00-24:00"],
        ["2026-01-01/2030-01-01"],
        ["2026-01-01T00:00Z/2030-01-01T00:00Z"],
        ["12:00-00:00", "00:00-12:00"],
    ],
)
def test_next_runs_terminates_when_blackouts_cover_everything(blackouts: list[str]) -> None:
    sched = schedule(NEW_YORK, ["02:00-04:00"], blackouts=blackouts, every=dt.timedelta(hours=1))
    assert next_runs(sched, utc("2027-01-01 00:00"), 5) == []


def test_next_runs_looks_no_further_than_the_horizon() -> None:
    after = utc("2027-01-01 00:00")
    blackout = f"2026-01-01T00:00Z/{(after + HORIZON + dt.timedelta(days=2)).isoformat()}"
    sched = schedule("UTC", ["02:00-04:00"], blackouts=[blackout])
    assert next_runs(sched, after, 1) == []


def test_next_runs_finds_a_run_just_inside_the_horizon() -> None:
    after = utc("2027-01-01 00:00")
    reopen = after + HORIZON - dt.timedelta(days=2)
    sched = schedule("UTC", ["02:00-04:00"], blackouts=[f"2026-01-01T00:00Z/{reopen.isoformat()}"])
    assert dues(next_runs(sched, after, 1)) == [reopen + dt.timedelta(hours=2)]


# --- open_until ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2027-01-01 02:00", "2027-01-01 03:00"),  # next blackout starts first
        ("2027-01-01 03:15", None),  # in the blackout
        ("2027-01-01 03:30", "2027-01-01 05:00"),  # after it: the slot's end
        ("2027-01-01 04:59", "2027-01-01 05:00"),
        ("2027-01-01 05:00", None),  # the slot is over
        ("2027-01-01 01:00", None),  # no slot yet
    ],
)
def test_open_until(instant: str, expected: str | None) -> None:
    sched = schedule("UTC", ["02:00-05:00"], blackouts=["03:00-03:30"])
    assert open_until(sched, utc(instant)) == (None if expected is None else utc(expected))


def test_open_until_is_the_slot_end_on_a_fall_back_day() -> None:
    sched = schedule(NEW_YORK, ["01:30-02:30"])
    assert open_until(sched, utc("2027-11-07 06:45")) == utc("2027-11-07 07:30")


# --- spread_offset ---------------------------------------------------------------------------


def test_spread_offset_is_pinned_so_a_change_of_hash_is_noticed() -> None:
    # sha256("east-1")[:8] as a big-endian integer, modulo 600,000 ms.
    assert spread_offset("east-1", dt.timedelta(minutes=10)) == dt.timedelta(milliseconds=531_270)


def test_spread_offset_differs_between_names() -> None:
    spread = dt.timedelta(minutes=10)
    assert spread_offset("east-1", spread) != spread_offset("east-2", spread)


@pytest.mark.parametrize(
    "spread", [dt.timedelta(0), dt.timedelta(microseconds=1), dt.timedelta(microseconds=999)]
)
def test_spread_offset_is_zero_without_a_whole_millisecond_of_spread(spread: dt.timedelta) -> None:
    assert spread_offset("east-1", spread) == dt.timedelta(0)


def test_spread_offset_refuses_a_negative_spread() -> None:
    with pytest.raises(ValueError, match="spread must not be negative"):
        spread_offset("east-1", dt.timedelta(seconds=-1))


@given(
    name=st.text(),
    spread=st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=7)),
)
def test_spread_offset_is_whole_milliseconds_within_the_spread(
    name: str, spread: dt.timedelta
) -> None:
    offset = spread_offset(name, spread)
    assert offset == spread_offset(name, spread)
    assert dt.timedelta(0) <= offset
    assert offset < spread or offset == spread == dt.timedelta(0)
    assert offset % dt.timedelta(milliseconds=1) == dt.timedelta(0)


# --- properties across zones -----------------------------------------------------------------

ZONES = [
    "UTC",
    NEW_YORK,
    LONDON,
    SYDNEY,
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Santiago",  # transitions at midnight
    "America/St_Johns",  # half-hour offset
    "Asia/Kolkata",
    "Europe/Dublin",  # "negative" DST in tzdata
    "Pacific/Chatham",  # 45-minute offset
    "Africa/Casablanca",  # DST suspended for Ramadan
]

wall_times = st.builds(dt.time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45, 59]))
weekly_texts = st.builds(
    lambda days, start, end: f"{days}{start:%H:%M}-{end:%H:%M}",
    st.sampled_from(["", "mon-fri ", "sat,sun ", "fri ", "sun-tue "]),
    wall_times,
    wall_times,
)
instants = st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


def absolute_text(start: dt.datetime, hours: int) -> str:
    return f"{start:%Y-%m-%dT%H:%M}/{start + dt.timedelta(hours=hours):%Y-%m-%dT%H:%M}"


absolute_texts = st.builds(
    absolute_text,
    st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 12, 31)),
    st.integers(1, 24 * 30),
)


def schedules_of(
    *, windows: int, blackouts: int, repeats: list[dt.timedelta]
) -> st.SearchStrategy[Schedule]:
    """Schedules of up to `windows` windows and `blackouts` blackouts, repeating every one
    of `repeats` (or once per slot), offset by whole milliseconds up to 3 h."""
    return st.builds(
        schedule,
        st.sampled_from(ZONES),
        st.lists(weekly_texts, min_size=1, max_size=windows),
        st.lists(st.one_of(weekly_texts, absolute_texts), max_size=blackouts),
        st.one_of(st.none(), st.sampled_from(repeats)),
        st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(hours=3)).map(
            lambda d: d // dt.timedelta(milliseconds=1) * dt.timedelta(milliseconds=1)
        ),
    )


schedules = schedules_of(
    windows=3, blackouts=2, repeats=[dt.timedelta(minutes=m) for m in (7, 30, 60, 240)]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sched=schedules, after=instants)
def test_every_planned_run_is_inside_its_slot_in_order_and_outside_blackouts(
    sched: Schedule, after: dt.datetime
) -> None:
    runs = next_runs(sched, after, 8)
    for run in runs:
        assert after <= run.due
        assert run.slot.start <= run.due < run.slot.end
        assert not in_blackout(sched, run.due)
        assert slot_at(sched, run.due) == run.slot
        until = open_until(sched, run.due)
        assert until is not None
        assert run.due < until <= run.slot.end
    assert all(a.due < b.due for a, b in pairwise(runs))


@settings(max_examples=150, deadline=None)
@given(sched=schedules, start=instants, days=st.integers(1, 20))
def test_slots_are_ordered_disjoint_and_the_same_whatever_range_finds_them(
    sched: Schedule, start: dt.datetime, days: int
) -> None:
    end = start + dt.timedelta(days=days)
    found = slots_between(sched, start, end)
    assert all(s.start < s.end for s in found)
    assert all(a.end <= b.start for a, b in pairwise(found))
    for s in found:
        # The same slot, seen from inside it and from a narrow range at its edge.
        assert slot_at(sched, s.start) == s
        assert slot_at(sched, s.end - dt.timedelta(microseconds=1)) == s
        assert slots_between(sched, s.start, s.start + dt.timedelta(microseconds=1)) == [s]


def test_times_may_carry_seconds() -> None:
    window = parse_window("02:00:30-02:01:15")
    assert window.start == dt.time(2, 0, 30)
    assert window.end == dt.time(2, 1, 15)


@pytest.mark.parametrize("text", ["02:00:60-03:00", "02:00-03:00:99", "24:00:01-01:00"])
def test_out_of_range_seconds_are_refused(text: str) -> None:
    with pytest.raises(WindowError):
        parse_window(text)


# Repeats from a minute up, so slots hold up to ~1,400 runs (the table test above has
# slots of thousands).
short_repeat_schedules = schedules_of(
    windows=2, blackouts=3, repeats=[dt.timedelta(seconds=n) for n in (61, 420, 1800, 3600)]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sched=short_repeat_schedules, start=instants)
def test_run_lookups_agree_with_listing_the_runs_of_a_slot(
    sched: Schedule, start: dt.datetime
) -> None:
    for s in slots_between(sched, start, start + dt.timedelta(days=3))[:2]:
        assert_lookups_agree_with_runs_of(sched, s, step=dt.timedelta(minutes=13))

"""What the CLI puts on a terminal: control characters made visible, times for people (local
or UTC, weekday and a relative form, no microseconds), and option values refused as usage
errors rather than tracebacks."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refreshd.cli.arguments import (
    EARLIEST,
    LATEST,
    MAX_PLAN_COUNT,
    count_up_to,
    instant,
    since,
)
from refreshd.cli.text import print_table, relative, safe, when

NOW = datetime(2026, 11, 29, 18, 0, tzinfo=UTC)  # a Sunday; 13:00 in New York (EST)


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# -- safe ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("SUCCESS: refresh", "SUCCESS: refresh"),
        ("Zürich 東京 ok", "Zürich 東京 ok"),
        ("\x1b[2J\x1b]0;owned\x07", "\\x1b[2J\\x1b]0;owned\\x07"),
        ("line\r\nnext\tcell", "line\\r\\nnext\\tcell"),
        ("nul\x00 del\x7f csi\x9b", "nul\\x00 del\\x7f csi\\x9b"),
        ("abc\u202edef", "abc\\u202edef"),  # a right-to-left override
        ("\udcff", "\\udcff"),  # an undecodable byte of an argument (surrogateescape)
    ],
)
def test_safe_writes_what_a_terminal_would_act_on_as_an_escape(raw: str, shown: str) -> None:
    assert safe(raw) == shown


@given(st.text())
def test_safe_output_is_always_printable_and_safe_again_changes_nothing(text: str) -> None:
    shown = safe(text)
    assert shown.isprintable()
    assert safe(shown) == shown


def test_a_table_escapes_its_cells_before_aligning_them(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(["A", "B"], [["x\x1b[31m", "y"], ["long-cell", "\r"]])

    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\r" not in out
    assert out.splitlines() == ["A          B", "x\\x1b[31m  y", "long-cell  \\r"]


# -- times -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("new_york")
def test_when_is_local_time_with_weekday_zone_and_how_far() -> None:
    assert when(datetime(2026, 11, 30, 7, 0, tzinfo=UTC), NOW, utc=False) == "Mon 02:00 EST, in 13h"


@pytest.mark.usefixtures("new_york")
def test_when_in_utc_says_utc() -> None:
    moment = datetime(2026, 11, 29, 17, 55, 30, 123456, tzinfo=UTC)
    assert when(moment, NOW, utc=True) == "Sun 17:55 UTC, 4m ago"
    assert when(moment, NOW, utc=True, seconds=True) == "Sun 17:55:30 UTC, 4m ago"


def test_when_beyond_six_days_gives_the_date_too() -> None:
    far = NOW + timedelta(days=40)
    assert when(far, NOW, utc=True) == "Fri 2027-01-08 18:00 UTC, in 40d"
    assert when(None, NOW, utc=True) == "-"


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(8999, 1, 1)))
def test_when_never_shows_microseconds(moment: datetime) -> None:
    shown = when(moment.replace(tzinfo=UTC), NOW, utc=False, seconds=True)
    assert re.search(r" \d\d:\d\d:\d\d [^ ]+, ", shown), shown


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "now"),
        (timedelta(milliseconds=400), "now"),
        (timedelta(seconds=5), "in 5s"),
        (-timedelta(seconds=59), "59s ago"),
        (-timedelta(minutes=5, seconds=59), "5m ago"),
        (timedelta(hours=13, minutes=5), "in 13h"),
        (timedelta(hours=47), "in 47h"),
        (-timedelta(days=3, hours=5), "3d ago"),
    ],
)
def test_relative_gives_the_largest_whole_unit(delta: timedelta, text: str) -> None:
    assert relative(delta) == text


# -- option values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "9999-12-31",
        "0001-01-01",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "1969-12-31T23:59:59Z",
        "9000-01-01T00:00:00Z",
        "next tuesday",
        "",
    ],
)
def test_an_instant_outside_what_refreshd_handles_is_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
        instant(text)


def test_instants_inside_the_range_come_back_in_utc() -> None:
    assert instant("1970-01-01T00:00:00Z") == EARLIEST
    assert instant("8999-12-31T23:59:59") == LATEST - timedelta(seconds=1)
    assert instant("2027-03-14T00:00:00-05:00") == datetime(2027, 3, 14, 5, tzinfo=UTC)


@pytest.mark.parametrize("text", ["99999999d", "1000000d", str(10**19)])
def test_a_since_reaching_before_1970_is_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        since(text)


def test_a_since_duration_is_that_long_ago() -> None:
    assert abs(since("1h") - (datetime.now(UTC) - timedelta(hours=1))) < timedelta(seconds=5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "1 or more"),
        ("-3", "1 or more"),
        ("²", "1 or more"),
        ("1e3", "1 or more"),
        ("10001", "at most 10,000"),
        ("99999999999999999999", "at most 10,000"),
        ("9" * 5000, "at most 10,000"),
    ],
)
def test_a_count_outside_1_to_its_cap_is_a_usage_error_that_says_the_cap(
    text: str, message: str
) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message) as caught:
        count_up_to(MAX_PLAN_COUNT, "runs per server")(text)
    assert len(str(caught.value)) < 200


def test_counts_up_to_the_cap_pass() -> None:
    parse = count_up_to(MAX_PLAN_COUNT, "runs per server")
    assert [parse("1"), parse("007"), parse("10000")] == [1, 7, 10_000]

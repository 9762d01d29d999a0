"""Refresh and blackout window texts -> window values: the syntax (pure)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

__all__ = [
    "AbsoluteWindow",
    "WeeklyWindow",
    "WindowError",
    "parse_blackout_window",
    "parse_window",
]

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_INDEX = {name: index for index, name in enumerate(_DAY_NAMES)}
_ALL_DAYS = frozenset(range(7))

# [0-9], not \d: \d also matches other scripts' digits, which int() would then accept.
# Seconds are optional (HH:MM:SS): rarely wanted by operators, but they let a test or a
# staggered fleet open a window at an exact second.
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?")
_FIRST_DIGIT = re.compile(r"[0-9]")
_LOOKS_ABSOLUTE = re.compile(r"\s*[0-9]{4}-[0-9]{2}-[0-9]{2}")

_FORMS = "write HH:MM-HH:MM (every day) or DAYS HH:MM-HH:MM, e.g. 'mon-fri 02:00-04:00'"
_DAYS_HINT = "use mon..sun, ranges like mon-fri, lists like sat,sun"
_TIME_HINT = "use 24-hour HH:MM or HH:MM:SS, e.g. 02:00 (24:00 only as an end)"
_ABSOLUTE_FORM = "write START/END in ISO 8601, e.g. '2026-12-24T00:00/2026-12-27T00:00'"
# Far enough from datetime's limits that moving between zones can never overflow.
_MIN_YEAR, _MAX_YEAR = 1970, 9998


class WindowError(ValueError):
    """A window text that cannot be parsed; str() says what is wrong and how to write it."""


@dataclass(frozen=True)
class WeeklyWindow:
    """A window that recurs on some weekdays at wall-clock times in the server's zone."""

    days: frozenset[int]  # 0=Mon .. 6=Sun: the days on which the window starts
    start: dt.time
    end: dt.time  # end <= start: the window ends the next day (equal: 24 h)
    text: str  # as written, for messages


@dataclass(frozen=True)
class AbsoluteWindow:
    """A one-off blackout: naive = wall clock in the server's zone; aware = those instants."""

    start: dt.datetime
    end: dt.datetime
    text: str


def parse_window(text: str) -> WeeklyWindow:
    """Parse 'HH:MM-HH:MM' or 'DAYS HH:MM-HH:MM' (case and outer whitespace do not matter)."""
    if not isinstance(text, str):
        raise WindowError(f"a window must be a string: {_FORMS}")
    body = text.strip().lower()
    if not body:
        raise WindowError(f"empty window: {_FORMS}")
    # Day names hold no digits, so the first digit is where the times begin.
    first_digit = _FIRST_DIGIT.search(body)
    if first_digit is None:
        raise WindowError(f"missing times in {text.strip()!r}: {_FORMS}")
    days_text = body[: first_digit.start()].strip()
    if days_text == "-":
        raise WindowError(f"missing start time in {text.strip()!r}: {_FORMS}")
    days = _parse_days(days_text) if days_text else _ALL_DAYS
    start, end = _parse_times(body[first_digit.start() :].strip())
    return WeeklyWindow(days=days, start=start, end=end, text=text)


def parse_blackout_window(text: str) -> WeeklyWindow | AbsoluteWindow:
    """Parse a weekly window or an absolute 'START/END' pair of ISO 8601 date-times."""
    if not isinstance(text, str):
        raise WindowError(f"a blackout window must be a string: {_FORMS}, or {_ABSOLUTE_FORM}")
    if "/" not in text:
        if _LOOKS_ABSOLUTE.match(text):
            raise WindowError(f"absolute blackout {text.strip()!r} needs an end: {_ABSOLUTE_FORM}")
        return parse_window(text)
    parts = text.split("/")
    if len(parts) != 2:
        raise WindowError(f"expected exactly one '/' in {text.strip()!r}: {_ABSOLUTE_FORM}")
    start = _parse_instant(parts[0], "start")
    end = _parse_instant(parts[1], "end")
    if (start.tzinfo is None) != (end.tzinfo is None):
        raise WindowError(
            f"{text.strip()!r} gives a UTC offset on one side only: give it on both sides "
            "(e.g. 2026-12-24T00:00+00:00/2026-12-27T00:00+00:00) or on neither "
            "(wall clock in the server's time zone)"
        )
    if end <= start:
        raise WindowError(
            f"blackout {text.strip()!r} does not end after it starts: END must be after START"
        )
    return AbsoluteWindow(start=start, end=end, text=text)


def _parse_days(days_text: str) -> frozenset[int]:
    days: set[int] = set()
    for item in days_text.split(","):
        item = item.strip()
        if not item:
            raise WindowError(f"empty day in {days_text!r}: {_DAYS_HINT}")
        if "-" not in item:
            days.add(_day(item))
            continue
        first, _, last = (part.strip() for part in item.partition("-"))
        if not first or not last or "-" in last:
            raise WindowError(f"incomplete day range {item!r}: {_DAYS_HINT}")
        # A range may wrap past Sunday (fri-mon = fri, sat, sun, mon).
        index, stop = _day(first), _day(last)
        days.add(index)
        while index != stop:
            index = (index + 1) % 7
            days.add(index)
    return frozenset(days)


def _day(name: str) -> int:
    try:
        return _DAY_INDEX[name]
    except KeyError:
        raise WindowError(f"unknown day {name!r}: {_DAYS_HINT}") from None


def _parse_times(times_text: str) -> tuple[dt.time, dt.time]:
    parts = [part.strip() for part in times_text.split("-")]
    if len(parts) == 1:
        raise WindowError(f"missing '-' between start and end in {times_text!r}: {_FORMS}")
    if len(parts) > 2:
        raise WindowError(
            f"expected one start and one end in {times_text!r}: {_FORMS} (days go first)"
        )
    start_text, end_text = parts
    trailing = end_text.split()
    if len(trailing) > 1 and _FIRST_DIGIT.search(trailing[-1]) is None:
        raise WindowError(
            f"unexpected {' '.join(trailing[1:])!r} after the times: days go first, "
            "e.g. 'mon-fri 02:00-04:00'"
        )
    if not start_text:
        raise WindowError(f"missing start time in {times_text!r}: {_FORMS}")
    if not end_text:
        raise WindowError(f"missing end time in {times_text!r}: {_FORMS}")
    start = _parse_time(start_text, is_end=False)
    end = _parse_time(end_text, is_end=True)
    return start, end


def _parse_time(value: str, *, is_end: bool) -> dt.time:
    match = _TIME.fullmatch(value)
    if match is None:
        raise WindowError(f"bad time {value!r}: {_TIME_HINT}")
    hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
    if minute > 59:
        raise WindowError(f"minute {match[2]} out of range in {value!r}: minutes are 00..59")
    if second > 59:
        raise WindowError(f"second {match[3]} out of range in {value!r}: seconds are 00..59")
    if hour == 24 and minute == 0 and second == 0:
        if not is_end:
            raise WindowError("a window cannot start at 24:00: start it at 00:00")
        return dt.time(0, 0)
    if hour > 23:
        raise WindowError(f"hour {match[1]} out of range in {value!r}: {_TIME_HINT}")
    return dt.time(hour, minute, second)


def _parse_instant(value: str, side: str) -> dt.datetime:
    value = value.strip()
    if not value:
        raise WindowError(f"missing {side} of the blackout: {_ABSOLUTE_FORM}")
    try:
        instant = dt.datetime.fromisoformat(value)
    except ValueError:
        raise WindowError(f"bad {side} date-time {value!r}: {_ABSOLUTE_FORM}") from None
    if not _MIN_YEAR <= instant.year <= _MAX_YEAR:
        raise WindowError(
            f"{side} year {instant.year} is out of range in {value!r}: "
            f"use a year from {_MIN_YEAR} to {_MAX_YEAR}"
        )
    return instant

"""Slot arithmetic across time zones and DST: slots, blackouts, spread offsets (pure)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from refreshd.core.windows import AbsoluteWindow, WeeklyWindow

__all__ = [
    "Interval",
    "Run",
    "Schedule",
    "Slot",
    "blackout_end",
    "blackouts_between",
    "in_blackout",
    "open_until",
    "slot_at",
    "slots_between",
    "spread_offset",
    "utc",
]

# Everything below takes and returns timezone-aware datetimes; results are UTC.
# Wall-clock times are turned into instants here, with zoneinfo, and never by a cron trigger:
# APScheduler's CronTrigger doubles or shifts runs on DST days (SPEC.md, Scheduling semantics).

_UTC = dt.UTC
_TICK = dt.timedelta(microseconds=1)
_MILLISECOND = dt.timedelta(milliseconds=1)
# Shorter repeats would make a single slot plan tens of thousands of runs for no benefit.
_MIN_EVERY = dt.timedelta(seconds=1)
# A window occurrence lasts at most 24 h plus a DST shift (2 h for historic double summer
# time), so it can reach two local dates past the one it starts on; these margins make sure
# every occurrence that touches a queried range is seen, whatever the zone.
_DAYS_BEFORE = 4
_DAYS_AFTER = 2


@dataclass(frozen=True)
class Schedule:
    """Everything about one server's timing, as a pure value. Equal schedules (the name
    aside: it only labels messages) plan the same runs, so they share memoised work."""

    name: str = field(compare=False)
    tz: ZoneInfo
    windows: tuple[WeeklyWindow, ...]
    blackouts: tuple[WeeklyWindow | AbsoluteWindow, ...] = ()
    every: dt.timedelta | None = None  # repeat inside a slot; None = once per slot
    offset: dt.timedelta = dt.timedelta(0)  # from spread_offset()

    def __post_init__(self) -> None:
        if self.every is not None and self.every < _MIN_EVERY:
            raise ValueError(f"{self.name}: every must be at least {_MIN_EVERY}, not {self.every}")
        if self.offset < dt.timedelta(0):
            raise ValueError(f"{self.name}: offset must not be negative, not {self.offset}")


@dataclass(frozen=True)
class Slot:
    """One occurrence of a server's window (windows that overlap on the same day merge)."""

    start: dt.datetime  # UTC
    end: dt.datetime  # UTC, exclusive


@dataclass(frozen=True)
class Run:
    """One planned refresh: the slot it belongs to and when it should fire."""

    slot: Slot
    due: dt.datetime  # UTC


def spread_offset(name: str, spread: dt.timedelta) -> dt.timedelta:
    """A per-server offset in [0, spread), whole milliseconds, the same in every process.

    Derived from sha256 of the name, not from hash() (salted per process) or a random draw,
    so a restart keeps every server at the same moment inside its window.
    """
    if spread < dt.timedelta(0):
        raise ValueError(f"spread must not be negative, not {spread}")
    choices = -(-spread // _MILLISECOND)  # whole milliseconds strictly below spread
    if choices == 0:
        return dt.timedelta(0)
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    # 64 bits against at most ~10^12 choices: the modulo bias is far below anything measurable.
    return int.from_bytes(digest[:8], "big") % choices * _MILLISECOND


def slots_between(schedule: Schedule, start: dt.datetime, end: dt.datetime) -> list[Slot]:
    """The slots overlapping [start, end), sorted.

    Occurrences that start on the same local date and overlap or touch merge into one slot.
    Occurrences from different dates never merge (else a 24 h window would be one endless
    slot): where one runs into the next date's slot, it ends where that one starts.
    """
    start, end = utc(start, "start"), utc(end, "end")
    if end <= start:
        return []
    first = _local_date(start, schedule.tz) - dt.timedelta(days=_DAYS_BEFORE)
    last = _local_date(end, schedule.tz) + dt.timedelta(days=_DAYS_AFTER)
    return [slot for slot in _slots(schedule, first, last) if slot.end > start and slot.start < end]


def slot_at(schedule: Schedule, instant: dt.datetime) -> Slot | None:
    """The slot containing instant (start <= instant < end), if any."""
    instant = utc(instant, "instant")
    for slot in slots_between(schedule, instant, instant + _TICK):
        if slot.start <= instant < slot.end:
            return slot
    return None


def in_blackout(schedule: Schedule, instant: dt.datetime) -> bool:
    """Whether any of the schedule's blackouts covers instant."""
    instant = utc(instant, "instant")
    return blackout_end(blackouts_between(schedule, instant, instant + _TICK), instant) is not None


def open_until(schedule: Schedule, instant: dt.datetime) -> dt.datetime | None:
    """If a refresh may start at instant, until when: the slot's end or the next blackout."""
    instant = utc(instant, "instant")
    slot = slot_at(schedule, instant)
    if slot is None:
        return None
    blackouts = blackouts_between(schedule, instant, slot.end)
    if blackout_end(blackouts, instant) is not None:
        return None
    later = [start for start, _ in blackouts if start > instant]
    return min([slot.end, *later])


# An interval of instants [start, end), UTC.
Interval = tuple[dt.datetime, dt.datetime]


def utc(value: dt.datetime, what: str) -> dt.datetime:
    """value in UTC; a naive one is refused (ValueError naming `what`): it is a bug."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(_UTC)


def _local_date(instant: dt.datetime, tz: ZoneInfo) -> dt.date:
    return instant.astimezone(tz).date()


def _dates(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def _wall_to_utc(wall: dt.datetime, tz: ZoneInfo, *, latest: bool) -> dt.datetime:
    """The instant a naive wall-clock time denotes in tz.

    Ambiguous (fall-back): the earliest reading for a start, the latest for an end (latest=True),
    so a window covers every wall reading inside it and stays one slot. Non-existent
    (spring-forward): the first instant after the gap, for starts and ends alike.
    """
    # zoneinfo maps any wall time to some instant; only a round trip tells whether that instant
    # really shows this wall time, i.e. whether the time exists and in how many ways.
    candidates = [wall.replace(tzinfo=tz, fold=fold).astimezone(_UTC) for fold in (0, 1)]
    real = [u for u in candidates if u.astimezone(tz).replace(tzinfo=None) == wall]
    if real:
        return max(real) if latest else min(real)
    return _transition(min(candidates), max(candidates), tz)


def _transition(before: dt.datetime, after: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The first instant with after's UTC offset, searched between two instants in a gap's edges.

    zoneinfo does not expose transitions; a binary search to the microsecond takes ~35 steps and
    runs only for wall times that fall in a spring-forward gap.
    """
    old_offset = before.astimezone(tz).utcoffset()
    low, high = before, after
    while high - low > _TICK:
        middle = low + (high - low) // 2
        if middle.astimezone(tz).utcoffset() == old_offset:
            low = middle
        else:
            high = middle
    return high


# Pure and called for every day of every search: a fleet shares a handful of windows and
# zones, so memoising turns planning 10,000 servers from seconds of zoneinfo arithmetic
# into dictionary look-ups.
@functools.lru_cache(maxsize=1 << 16)
def _occurrence(window: WeeklyWindow, tz: ZoneInfo, day: dt.date) -> Interval | None:
    """The occurrence of window that starts on local date day, or None (not its day, or empty)."""
    if day.weekday() not in window.days:
        return None
    end_day = day if window.end > window.start else day + dt.timedelta(days=1)
    start = _wall_to_utc(dt.datetime.combine(day, window.start), tz, latest=False)
    end = _wall_to_utc(dt.datetime.combine(end_day, window.end), tz, latest=True)
    # A window lying wholly inside a spring-forward gap has no instants that day.
    return (start, end) if end > start else None


def _union(intervals: list[Interval]) -> list[Interval]:
    """Overlapping or touching intervals merged, sorted."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _slots(schedule: Schedule, first: dt.date, last: dt.date) -> list[Slot]:
    return list(_slots_of(schedule.windows, schedule.tz, first, last))


@functools.lru_cache(maxsize=1 << 12)
def _slots_of(
    windows: tuple[WeeklyWindow, ...], tz: ZoneInfo, first: dt.date, last: dt.date
) -> tuple[Slot, ...]:
    """The slots of `windows` starting on local dates first..last (memoised like
    `_occurrence`: servers sharing windows and a zone share the work)."""
    spans: list[Interval] = []
    for day in _dates(first, last):
        occurrences = [_occurrence(window, tz, day) for window in windows]
        spans.extend(_union([o for o in occurrences if o is not None]))
    spans.sort()
    slots: list[Slot] = []
    reach: dt.datetime | None = None  # the latest end among the spans seen so far
    for index, (start, end) in enumerate(spans):
        reach = end if reach is None else max(reach, end)
        # Cut at the next date's span, which then carries on to `reach`: the open time stays
        # the same, but each date keeps its own slot and slots never overlap.
        stop = reach if index + 1 == len(spans) else min(reach, spans[index + 1][0])
        if stop > start:
            slots.append(Slot(start=start, end=stop))
    return tuple(slots)


def blackouts_between(schedule: Schedule, start: dt.datetime, end: dt.datetime) -> list[Interval]:
    """The blackout intervals overlapping [start, end), merged."""
    tz = schedule.tz
    days = _dates(
        _local_date(start, tz) - dt.timedelta(days=_DAYS_BEFORE),
        _local_date(end, tz) + dt.timedelta(days=_DAYS_AFTER),
    )
    found: list[Interval] = []
    for blackout in schedule.blackouts:
        if isinstance(blackout, AbsoluteWindow):
            interval = _absolute(blackout, tz)
            # Naive and wholly inside a spring-forward gap: it covers no instant.
            if interval[1] > interval[0]:
                found.append(interval)
        else:
            found.extend(o for day in days if (o := _occurrence(blackout, tz, day)) is not None)
    return [(s, e) for s, e in _union(found) if e > start and s < end]


@functools.lru_cache(maxsize=1 << 12)
def _absolute(blackout: AbsoluteWindow, tz: ZoneInfo) -> Interval:
    if blackout.start.tzinfo is None:
        # Naive: wall clock in the server's zone, resolved to cover as much as possible.
        return (
            _wall_to_utc(blackout.start, tz, latest=False),
            _wall_to_utc(blackout.end, tz, latest=True),
        )
    return blackout.start.astimezone(_UTC), blackout.end.astimezone(_UTC)


def blackout_end(blackouts: list[Interval], instant: dt.datetime) -> dt.datetime | None:
    """The end of the (merged) blackout containing instant, or None when instant is open."""
    for start, end in blackouts:
        if start <= instant < end:
            return end
    return None

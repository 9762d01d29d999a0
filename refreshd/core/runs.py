"""Runs inside a slot: every/spread, blackouts inside the slot (pure).

`runs_of` is the definition: every run of a slot, listed. The planner asks for one run at a
time (`run_at_or_before`, `run_from`, `run_after`, `next_runs`), computed without listing
them, so its cost does not grow with the runs in a slot; the tests hold the two to agree.
"""

from __future__ import annotations

import datetime as dt

from refreshd.core.slots import (
    Interval,
    Run,
    Schedule,
    Slot,
    blackout_end,
    blackouts_between,
    slots_between,
    utc,
)

__all__ = [
    "HORIZON",
    "next_runs",
    "run_after",
    "run_at_or_before",
    "run_from",
    "runs_of",
]

# Everything below takes and returns timezone-aware datetimes; results are UTC.

_TICK = dt.timedelta(microseconds=1)
_ZERO = dt.timedelta(0)
# next_runs gives up this far ahead: blackouts may cover every slot, and a search must end.
HORIZON = dt.timedelta(days=400)
_SEARCH_STEP = dt.timedelta(days=14)


def runs_of(schedule: Schedule, slot: Slot) -> list[Run]:
    """The refreshes planned for one slot, in order, all inside it and outside blackouts.

    Nominal dues are slot.start + offset, then every `every` after that, before slot.end. A due
    inside a blackout moves to the blackout's end, unless that is past the slot or not before
    the next nominal due (which then covers it). An offset as long as the slot wraps around
    (offset modulo slot length), keeping servers with a large spread staggered. A slot that
    would get no run this way still gets one at its first instant outside a blackout, if any.
    """
    length = slot.end - slot.start
    if length <= dt.timedelta(0):
        return []
    blackouts = blackouts_between(schedule, slot.start, slot.end)
    first = slot.start + schedule.offset % length
    nominal = [first]
    if schedule.every is not None:
        while nominal[-1] + schedule.every < slot.end:
            nominal.append(nominal[-1] + schedule.every)
    dues: list[dt.datetime] = []
    for index, due in enumerate(nominal):
        moved = _first_open(blackouts, due)
        following = nominal[index + 1] if index + 1 < len(nominal) else slot.end
        if moved < following:
            dues.append(moved)
    if not dues:
        # Every nominal due then lies in one blackout reaching past the slot's end; an open
        # stretch, if any, can only be before the first of them.
        earliest = _first_open(blackouts, slot.start)
        if earliest < slot.end:
            dues.append(earliest)
    return [Run(slot=slot, due=due) for due in dues]


class _SlotRuns:
    """`runs_of` without building the list: the k-th run of a slot computed directly.

    A slot with `every` = 1 s in a one-hour window has 3,600 runs; planning needs only the
    run at or before an instant and the one after a run, so the cost must not grow with the
    runs in a slot (a daemon re-plans after every refresh). Nominal due k is
    first + k x every; the due kept for k is that nominal moved past any blackout, dropped
    when the move reaches the next nominal due (or the slot's end). Merged blackouts are
    few, so every search below steps over a whole blackout at a time.
    """

    __slots__ = ("blackouts", "count", "every", "fallback", "first", "slot")

    def __init__(self, schedule: Schedule, slot: Slot) -> None:
        self.slot = slot
        length = slot.end - slot.start
        self.blackouts = blackouts_between(schedule, slot.start, slot.end) if length > _ZERO else []
        self.first = slot.start + schedule.offset % length if length > _ZERO else slot.end
        self.every = schedule.every
        # How many k have first + k x every < slot.end (ceiling division).
        span = slot.end - self.first
        self.count = 0 if span <= _ZERO else (1 if self.every is None else -(-span // self.every))
        # runs_of's last resort: every nominal due lies in one blackout reaching past the
        # slot's end (the only way all are dropped), so the slot's one run is its first
        # open instant, if any.
        self.fallback: dt.datetime | None = None
        if self.count and _first_open(self.blackouts, self.first) >= slot.end:
            self.count = 0
            earliest = _first_open(self.blackouts, slot.start)
            if earliest < slot.end:
                self.fallback = earliest

    def nominal(self, k: int) -> dt.datetime:
        return self.first if self.every is None else self.first + k * self.every

    def due(self, k: int) -> dt.datetime | None:
        """The due kept for nominal k, or None when a blackout drops it."""
        moved = _first_open(self.blackouts, self.nominal(k))
        following = self.nominal(k + 1) if k + 1 < self.count else self.slot.end
        return moved if moved < following else None

    def index_below(self, instant: dt.datetime) -> int:
        """The largest k whose nominal due is before instant (-1 if none)."""
        if self.every is None:
            return 0 if self.first < instant else -1
        return min(self.count - 1, -(-(instant - self.first) // self.every) - 1)

    def at_or_before(self, instant: dt.datetime) -> dt.datetime | None:
        if self.fallback is not None:
            return self.fallback if self.fallback <= instant else None
        k = self.index_below(instant + _TICK)
        while k >= 0:
            due = self.due(k)
            if due is not None and due <= instant:
                return due
            # Nominal k lies in a blackout (an open one is kept where it is, at or before
            # instant): no run of that blackout is at or before instant; go below it.
            start = self._blackout_start(self.nominal(k))
            k = min(k - 1, self.index_below(start))
        return None

    def after(self, instant: dt.datetime) -> dt.datetime | None:
        if self.fallback is not None:
            return self.fallback if self.fallback > instant else None
        # The last nominal due at or before instant may have been moved past it by a
        # blackout; every later one is after it.
        k = max(0, self.index_below(instant + _TICK))
        while k < self.count:
            due = self.due(k)
            if due is not None and due > instant:
                return due
            end = blackout_end(self.blackouts, self.nominal(k))
            # Dropped: nominal k lies in a blackout, whose nominals all move to its end and
            # only the last of them may be kept; go to that one.
            k = k + 1 if end is None else max(k + 1, self.index_below(end))
        return None

    def _blackout_start(self, instant: dt.datetime) -> dt.datetime:
        for start, end in self.blackouts:
            if start <= instant < end:
                return start
        return instant


def run_at_or_before(schedule: Schedule, slot: Slot, instant: dt.datetime) -> Run | None:
    """The last of `runs_of(schedule, slot)` due at or before instant, without listing them."""
    due = _SlotRuns(schedule, slot).at_or_before(utc(instant, "instant"))
    return None if due is None else Run(slot=slot, due=due)


def run_from(schedule: Schedule, slot: Slot, instant: dt.datetime) -> Run | None:
    """The first of `runs_of(schedule, slot)` due at or after instant, without listing them."""
    due = _SlotRuns(schedule, slot).after(utc(instant, "instant") - _TICK)
    return None if due is None else Run(slot=slot, due=due)


def run_after(schedule: Schedule, run: Run) -> Run | None:
    """The run of the same slot that follows `run`, without listing the slot's runs."""
    due = _SlotRuns(schedule, run.slot).after(run.due)
    return None if due is None else Run(slot=run.slot, due=due)


def next_runs(schedule: Schedule, after: dt.datetime, count: int) -> list[Run]:
    """The next `count` runs with due >= after, including those of the slot containing after.

    Looks at most HORIZON ahead, so it may return fewer (none, if blackouts cover everything).
    """
    after = utc(after, "after")
    found: list[Run] = []
    if count <= 0:
        return found
    horizon = after + HORIZON
    cursor = after
    last_start: dt.datetime | None = None
    while cursor < horizon:
        step_end = min(cursor + _SEARCH_STEP, horizon)
        for slot in slots_between(schedule, cursor, step_end):
            # A slot that straddles two search steps is listed by both.
            if last_start is not None and slot.start <= last_start:
                continue
            last_start = slot.start
            runs = _SlotRuns(schedule, slot)
            due = runs.after(after - _TICK)
            while due is not None:
                found.append(Run(slot=slot, due=due))
                if len(found) == count:
                    return found
                due = runs.after(due)
        cursor = step_end
    return found


def _first_open(blackouts: list[Interval], instant: dt.datetime) -> dt.datetime:
    """instant itself if no blackout covers it, else the end of the one that does."""
    end = blackout_end(blackouts, instant)
    return instant if end is None else end

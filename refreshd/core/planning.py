"""What a server does next and when: catch-up, runs already done, retry limits (pure)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise

from refreshd.core.ledger import Event, Kind
from refreshd.core.runs import HORIZON, next_runs, run_after, run_at_or_before, run_from
from refreshd.core.slots import Run, Schedule, Slot, open_until, slot_at, slots_between

__all__ = [
    "Next",
    "earliest_start",
    "look_again_at",
    "missed_slot",
    "never_runs",
    "next_fire",
    "retry_until",
    "success_gap",
]

_TICK = timedelta(microseconds=1)

GAP_SPAN = timedelta(weeks=5)
"""`success_gap` looks this far back and ahead: every weekly pattern and the blackouts
around now; a longer blackout is seen as it comes within reach."""


@dataclass(frozen=True)
class Next:
    """The run to do next, and the instant to start it (its due, or later for a catch-up)."""

    run: Run
    at: datetime

    @property
    def catch_up(self) -> bool:
        return self.at > self.run.due


def next_fire(schedule: Schedule, not_before: datetime, last_done: datetime | None) -> Next | None:
    """The first run after `last_done` (the latest run that succeeded) that may start at or
    after `not_before`.

    A run due at or before `last_done` is done or superseded: a later refresh already
    rebuilt everything it would have, so it is never sent, even when the wall clock steps
    back past it. Catch-up (SPEC.md): when `not_before` falls inside an open slot whose
    latest started run is not done (the daemon was down, a suspension or a credentials wait
    just ended), that run starts at once; earlier runs of the slot are covered by it.
    None when nothing is planned within the windows' search horizon.
    """

    def done(run: Run) -> bool:
        return last_done is not None and run.due <= last_done

    if open_until(schedule, not_before) is not None:
        slot = slot_at(schedule, not_before)
        if slot is not None:
            latest = run_at_or_before(schedule, slot, not_before)
            if latest is not None and not done(latest):
                return Next(latest, not_before)
    after = not_before if last_done is None else max(not_before, last_done + _TICK)
    runs = next_runs(schedule, after, 1)
    return Next(runs[0], runs[0].due) if runs else None


def earliest_start(
    now: datetime, suspended_until: datetime | None, credentials_wait_until: datetime | None
) -> datetime:
    """Now, or later while the server is suspended or its credentials wait."""
    return max([now, *(t for t in (suspended_until, credentials_wait_until) if t is not None)])


def retry_until(schedule: Schedule, run: Run, now: datetime) -> datetime:
    """The first instant at which no retry of `run` may start: the slot's end, the next
    blackout, or the slot's next run (which supersedes this one), whichever comes first."""
    limit = open_until(schedule, now) or now
    following = run_after(schedule, run)
    return limit if following is None else min(limit, following.due)


def missed_slot(previous: Run, chosen: Next | None, last_done: datetime | None) -> Slot | None:
    """The slot that ended without a success, when a tried run is given up for `chosen`:
    no retry fitted, or a suspension or credentials wait outlasted it. None when the slot
    goes on (a later repeat, or the same slot after a wait) or had a success."""
    if chosen is not None and chosen.run.slot == previous.slot:
        return None
    slot = previous.slot
    if last_done is not None and slot.start <= last_done < slot.end:
        return None
    return slot


def slot_missed(
    server: str,
    previous: Run,
    chosen: Next | None,
    last_done: datetime | None,
    outcome: object,
    attempts: int,
) -> Event | None:
    """`slot.missed` when a tried run is given up and its slot had no success
    (`missed_slot`); None when it had one or goes on."""
    slot = missed_slot(previous, chosen, last_done)
    if slot is None:
        return None
    fields = {
        "server": server,
        "slot": slot.start,
        "slot_end": slot.end,
        "outcome": None if outcome is None else str(outcome),
        "attempts": attempts,
    }
    return Event(Kind.SLOT_MISSED, fields)


def look_again_at(not_before: datetime) -> datetime:
    """When to plan again a server for which `next_fire(schedule, not_before, ...)` found
    nothing: no run lies within HORIZON of `not_before`, so none can be due before its end,
    and from there the search sees the next HORIZON (a blackout longer than it has ended, or
    will be seen ending)."""
    return not_before + HORIZON


def never_runs(schedule: Schedule, now: datetime) -> str | None:
    """Why a server with this schedule has no run within HORIZON of `now`, or None when it
    has one: every slot blacked out, or no slot at all."""
    # A slot not wholly blacked out gets a run whatever the spread offset and `every`
    # (runs_of's last resort), so the answer depends on the windows, the blackouts and the
    # zone only: servers sharing them share one search of the horizon.
    return _never_runs(replace(schedule, offset=timedelta(0), every=None), now)


@functools.lru_cache(maxsize=256)
def _never_runs(schedule: Schedule, now: datetime) -> str | None:
    if next_runs(schedule, now, 1):
        return None
    days = HORIZON.days
    if slots_between(schedule, now, now + HORIZON):
        return f"every window in the next {days} days falls in a blackout"
    return f"its windows give no slot in the next {days} days"


def success_gap(schedule: Schedule, now: datetime) -> timedelta | None:
    """The longest a server with this schedule can go between two successes while every
    slot succeeds: the longest from one slot's start to the end of the next slot with a
    run, over the slots `GAP_SPAN` around `now` and the first one after them (wherever
    the planner finds it). None with fewer than two slots with a run: nothing to expect."""
    # Whether a slot has a run, and its start, depend on the windows, blackouts and zone
    # only (see never_runs): servers sharing them share one computation.
    return _success_gap(replace(schedule, offset=timedelta(0), every=None), now)


@functools.lru_cache(maxsize=256)
def _success_gap(schedule: Schedule, now: datetime) -> timedelta | None:
    slots = {
        slot.start: slot
        for slot in slots_between(schedule, now - GAP_SPAN, now + GAP_SPAN)
        if run_from(schedule, slot, slot.start) is not None
    }
    for run in next_runs(schedule, now + GAP_SPAN, 1):
        slots.setdefault(run.slot.start, run.slot)
    ordered = sorted(slots.values(), key=lambda slot: slot.start)
    gaps = [after.end - before.start for before, after in pairwise(ordered)]
    return max(gaps, default=None)

"""The only place refreshd reads the time: a system clock, and a fake one for tests.

Everything that needs "now" takes a `Clock`. Two readings, for two jobs:

- `now()`: the wall clock, as an aware UTC datetime: windows, slots, the ledger's times,
  history. It can step (NTP, an operator), so refreshd never measures a span with it.
- `monotonic()`: seconds that only move forward: time-outs, durations, the heartbeat.

`wait(event, seconds)` blocks until the event is set or the seconds pass on the clock;
the fake clock never blocks: it advances itself by the seconds asked for (unless the
event is set), so a loop under test runs in microseconds and sees the time it expects.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "FakeClock", "StepWatch", "SystemClock", "system_clock"]


class Clock(Protocol):
    """What refreshd asks of time."""

    def now(self) -> datetime:
        """The wall clock: an aware datetime in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never go backwards."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Block until `event` is set (True) or `seconds` pass (False)."""
        ...


class SystemClock:
    """The operating system's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


system_clock = SystemClock()
"""The clock every production path uses; tests pass a `FakeClock` instead."""


class FakeClock:
    """A clock that moves only when told (`advance`, `set`, or a `wait` that times out).

    Thread-safe. `step_wall` moves the wall clock alone, as NTP or an operator would.
    """

    def __init__(self, start: datetime) -> None:
        if start.utcoffset() is None:
            raise ValueError("FakeClock needs an aware start time")
        self._lock = threading.Lock()
        self._wall = start.astimezone(UTC)
        self._mono = 1000.0

    def now(self) -> datetime:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self.advance(timedelta(seconds=max(0.0, seconds)))
        return event.is_set()

    def advance(self, by: timedelta) -> None:
        """Both clocks move forward by `by`."""
        if by < timedelta(0):
            raise ValueError("time only moves forward; use step_wall for a wall-clock step")
        with self._lock:
            self._wall += by
            self._mono += by.total_seconds()

    def set(self, moment: datetime) -> None:
        """Advance both clocks to `moment` (not backwards)."""
        self.advance(moment.astimezone(UTC) - self.now())

    def step_wall(self, by: timedelta) -> None:
        """The wall clock alone jumps (either way); the monotonic clock does not."""
        with self._lock:
            self._wall += by


class StepWatch:
    """Notices the wall clock stepping (NTP, an operator) against the monotonic clock.

    Each `look()` reads the wall clock between two monotonic readings, so the offset
    between the clocks is known within half that gap: a thread descheduled between two
    reads (a loaded host) widens the gap instead of passing for a step, and the reading
    after it does not pass for a step back either. A reading less sure than half the
    threshold is not compared at all: a step made meanwhile is told by the next sure one.
    """

    def __init__(self, clock: Clock, threshold: float) -> None:
        self.clock = clock
        self.threshold = threshold
        self._offset, self._error = self._read()

    def _read(self) -> tuple[float, float]:
        before = self.clock.monotonic()
        wall = self.clock.now().timestamp()
        after = self.clock.monotonic()
        return wall - (before + after) / 2, (after - before) / 2

    def look(self) -> float | None:
        """The step since the last look, in seconds (+ ahead), or None if there was none."""
        offset, error = self._read()
        if error > self.threshold / 2:
            return None  # too unsure to compare, or to compare the next one with
        step = offset - self._offset
        uncertain = error + self._error
        self._offset, self._error = offset, error
        return step if abs(step) > self.threshold + uncertain else None

"""The timing engine: one heap of wake-up instants, one dated APScheduler job for the earliest.

10,000 servers cost one timer, not 10,000 jobs. Entries are (instant, server, generation):
the scheduler bumps a server's generation whenever it re-plans it, so an older entry is
stale and skipped. The timer decides nothing; at the armed instant it calls `on_wake`,
which asks `pop_due` for the servers now due and re-arms through `push`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from refreshd.clock import Clock

__all__ = ["Timer"]


class Timer:
    """Not thread-safe: the scheduler calls it under its own lock."""

    def __init__(
        self,
        clock: Clock,
        on_wake: Callable[[], None],
        current: Callable[[str], int | None],
    ) -> None:
        """`on_wake` runs at each armed instant; `current(server)` is the server's live
        generation (None once it is gone), against which entries are judged stale."""
        self._clock = clock
        self._on_wake = on_wake
        self._current = current
        self._aps = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(2)},
            job_defaults={
                # Never drop a wake-up because the process woke late: the re-check at fire
                # time decides whether a run may still start (window, blackout, suspension).
                "misfire_grace_time": None,
                "coalesce": True,
            },
        )
        self._queue: list[tuple[datetime, int, str, int]] = []  # (at, seq, server, generation)
        self._seq = itertools.count()
        self._armed: tuple[datetime, str] | None = None  # the wake job in APScheduler
        self._stopped = False
        self._last_beat = clock.monotonic()

    def start(self) -> None:
        self._aps.start()

    def stop(self) -> None:
        self._stopped = True
        # APScheduler marks itself stopped without its job-store lock, so a pass already
        # running would fail to remove its finished job and die with a traceback. Paused,
        # no new pass starts; removing the jobs waits out the one running (it holds that
        # lock); then nothing is left for a pass to remove.
        if self._aps.running:
            self._aps.pause()
            self._aps.remove_all_jobs()
            self._aps.shutdown(wait=False)

    # --- the queue ----------------------------------------------------------------------

    def push(self, at: datetime, server: str, generation: int) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), server, generation))
        self.arm()

    def next_wake(self) -> datetime | None:
        """The earliest live instant, the one the engine is armed for."""
        self._drop_stale()
        return self._queue[0][0] if self._queue else None

    def pop_due(self, now: datetime) -> list[str]:
        """The servers whose live entries are due at `now`, in queue order; called by
        `on_wake`, which the engine no longer holds armed."""
        self._armed = None
        due: list[str] = []
        while self._queue and self._queue[0][0] <= now:
            _, _, server, generation = heapq.heappop(self._queue)
            if self._current(server) == generation:
                due.append(server)
        return due

    def arm(self, *, force: bool = False) -> None:
        """Make sure the engine wakes at the queue's earliest instant; `force`: arm anew
        even if already armed as early (the wall clock jumped: its sleep is wrong)."""
        self._drop_stale()
        if not self._queue or self._stopped:
            return
        earliest = self._queue[0][0]
        if not force and self._armed is not None and self._armed[0] <= earliest:
            return  # already waking at or before it
        if self._armed is not None:
            # It may be firing right now; an extra wake-up finds nothing and re-arms.
            with contextlib.suppress(JobLookupError):
                self._aps.remove_job(self._armed[1])
        job_id = f"wake#{next(self._seq)}"
        self._armed = (earliest, job_id)
        self._aps.add_job(self._on_wake, trigger="date", run_date=earliest, id=job_id)

    def _drop_stale(self) -> None:
        while self._queue and self._current(self._queue[0][2]) != self._queue[0][3]:
            heapq.heappop(self._queue)

    # --- health -------------------------------------------------------------------------

    def beat(self) -> None:
        """Ask the engine to run a tiny job now; it proves the engine alive."""
        if not self._stopped:
            self._aps.add_job(self._beaten, id="beat", replace_existing=True)

    def _beaten(self) -> None:
        self._last_beat = self._clock.monotonic()

    def alive(self, within: float) -> bool:
        return self._clock.monotonic() - self._last_beat <= within

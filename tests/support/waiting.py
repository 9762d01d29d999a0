"""Waiting on a condition, never on the clock alone: every wait has a deadline and says what
it waited for. Also threads started all at once and waited for, for races."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

POLL = 0.05


def eventually(check: Callable[[], bool], *, timeout: float = 30.0, what: str = "") -> None:
    """Return as soon as `check()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        time.sleep(POLL)


def all_at_once(work: Callable[[int], None], count: int, *, timeout: float = 120.0) -> None:
    """Run work(0) to work(count - 1), each in a thread of its own, released together by a
    barrier so that they race; return when all are done. Fails with the first error a
    thread raised (a thread's own exception would be lost), or if a thread is still running
    after `timeout` seconds."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            start.wait()
            work(n)
        except BaseException as err:  # raised again in the caller's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    running = sum(thread.is_alive() for thread in threads)
    assert running == 0, f"{running} of {count} threads still running after {timeout}s"
    if errors:
        raise errors[0]


def holds_for(check: Callable[[], bool], *, seconds: float, what: str = "") -> None:
    """Watch `check()` for `seconds` and fail the moment it stops holding.

    For promises that something does NOT happen ("no second refresh while the window is
    open"): the watch lasts as long as the wrong thing would need to show, and a test that
    breaks the promise fails when it breaks it, not at the end."""
    deadline = time.monotonic() + seconds
    while True:
        if not check():
            raise AssertionError(f"stopped holding: {what or check}")
        if time.monotonic() >= deadline:
            return
        time.sleep(POLL)

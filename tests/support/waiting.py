"""Waiting on a condition, never on the clock alone: every wait has a deadline and says what
it waited for."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL = 0.05


def eventually(check: Callable[[], bool], *, timeout: float = 10.0, what: str = "") -> None:
    """Return as soon as `check()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        time.sleep(POLL)


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

"""Option values checked as argparse reads them: instants, durations ago, bounded counts.

A value refreshd cannot work with is a usage error (exit 2) naming the option and what it
accepts, never a traceback from deeper down (a date past year 9999 after a time-zone
shift, an integer SQLite cannot hold, a plan too long to print).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from refreshd.clock import system_clock
from refreshd.core.durations import parse_duration

__all__ = [
    "EARLIEST",
    "LATEST",
    "MAX_HISTORY_LIMIT",
    "MAX_PLAN_COUNT",
    "OneOf",
    "count_up_to",
    "instant",
    "one_of",
    "since",
]

# The instants a command accepts. Planning from `plan --from` looks ahead up to a couple
# of centuries (10,000 weekly runs) and shifts by zone offsets of up to a day; inside
# these bounds every such step stays within datetime's years 1 to 9999.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
MAX_PLAN_COUNT = 10_000  # runs per server: more is neither readable nor quick
MAX_HISTORY_LIMIT = 1_000_000  # far above any retention's calls; SQLite needs a 64-bit one
_DIGITS = re.compile(r"[0-9]+")  # [0-9], not isdigit(): that also takes '²'
_RANGE = f"from {EARLIEST:%Y-%m-%d} to {LATEST - timedelta(days=1):%Y-%m-%d}"


def instant(text: str) -> datetime:
    """An ISO 8601 instant (UTC when it has no offset), in UTC, inside EARLIEST..LATEST."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 instant (e.g. 2027-03-14T00:00:00-05:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
        moment = EARLIEST - timedelta(days=1)
    if not EARLIEST <= moment < LATEST:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: give an instant {_RANGE}")
    return moment


def since(text: str) -> datetime:
    """A duration ago ('24h', '7d') or an ISO 8601 instant, not before EARLIEST."""
    try:
        ago = parse_duration(text)
    except ValueError:
        return instant(text)
    now = system_clock.now()
    if ago > now - EARLIEST:
        raise argparse.ArgumentTypeError(
            f"{text!r} reaches back before {EARLIEST:%Y-%m-%d}: give a shorter duration "
            "or an instant"
        )
    return now - ago


def count_up_to(most: int, what: str) -> Callable[[str], int]:
    """An argument type: a whole number from 1 to `most` (of `what`, for the message)."""

    def parse(text: str) -> int:
        if not _DIGITS.fullmatch(text):
            number = 0
        else:  # int() of thousands of digits is refused, and slow before that: cap first
            significant = text.lstrip("0")
            number = int(significant or "0") if len(significant) <= 12 else most + 1
        if number < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
        if number > most:
            raise argparse.ArgumentTypeError(
                f"{text[:24]}: at most {most:,} {what} (the cap keeps the output and the time "
                "it takes bounded)"
            )
        return number

    return parse


class OneOf:
    """An argument type: one of `choices` in any case (a `what`, for the message), given as
    the option or, when it is not, in the environment `variable` (the option's default).
    Its `choices` are public: the completion script offers them (cli/completion.py)."""

    def __init__(self, choices: Sequence[str], what: str, variable: str) -> None:
        self.choices = tuple(choices)
        self._what = what
        self._variable = variable

    def __call__(self, text: str) -> str:
        if text.lower() in self.choices:
            return text.lower()
        choices = self.choices
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a {self._what}: give {', '.join(choices[:-1])} or "
            f"{choices[-1]} (in the option, or else in ${self._variable})"
        )


def one_of(choices: Sequence[str], what: str, variable: str) -> OneOf:
    """The argument type OneOf(choices, what, variable)."""
    return OneOf(choices, what, variable)

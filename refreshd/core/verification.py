"""Whether a refresh was applied: pure rules over what the cluster's database showed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

# (server_ip, server_id) of one telephony server
BoxId = tuple[str, str]

VERIFY_TIMEOUT_DEFAULT = timedelta(minutes=3)  # keepalive runs every minute; three chances
VERIFY_TIMEOUT_MIN = timedelta(seconds=10)
VERIFY_TIMEOUT_MAX = timedelta(hours=1)


@dataclass(frozen=True)
class Applied:
    """Every telephony server cleared its flag `seconds` after the call started."""

    seconds: float
    boxes: int


@dataclass(frozen=True)
class NotApplied:
    """`verify_timeout` passed with `flagged` still at 'Y' (or the database unreadable:
    `unread` says why, and nothing is known of the boxes)."""

    seconds: float
    flagged: tuple[BoxId, ...]
    boxes: int
    unread: str | None = None


Verdict = Applied | NotApplied


def verdict(
    started: datetime,
    now: datetime,
    timeout: timedelta,
    *,
    boxes: Sequence[BoxId] | None,
    flagged: Sequence[BoxId] = (),
    unread: str | None = None,
) -> Verdict | None:
    """The verdict on a refresh started at `started`, from a reading at `now` (`boxes`
    None: the database could not be read, `unread` says why); None: look again later."""
    seconds = max(0.0, (now - started).total_seconds())
    if boxes is not None and not flagged:
        return Applied(seconds, len(boxes))
    if now - started < timeout:
        return None
    if boxes is None:
        return NotApplied(seconds, (), 0, unread or "the database could not be read")
    return NotApplied(seconds, tuple(sorted(flagged)), len(boxes))


# Settling a call whose answer was lost (issue 14, item 5): did VICIdial take a refresh at
# or after the call's start? `server_refresh` sets system_settings.reload_timestamp = NOW():
# the database's clock, truncated to the second, in its own zone (the reader turns it into
# an instant with UNIX_TIMESTAMP, so zones drop out; the database's clock does not).
_STAMP_RESOLUTION = timedelta(seconds=1)


class Taken(Enum):
    """Whether a refresh was taken at or after a call's start."""

    YES = "yes"  # record the run as done: a second call would only reload every box again
    NO = "no"  # nothing since the call's start: call again
    UNKNOWN = "unknown"  # too close to tell within the clocks' uncertainty: call again


def refresh_taken(
    started: datetime,
    reload_timestamp: datetime | None,
    *,
    read_at: datetime,
    database_now: datetime,
    uncertainty: timedelta = timedelta(0),
) -> Taken:
    """Was a refresh taken at or after `started` (refreshd's clock, UTC)?

    `reload_timestamp`: system_settings.reload_timestamp as read; `database_now`: the
    database's own clock read in the same query, at `read_at` on refreshd's clock; their
    difference is the skew between the two clocks, known within `uncertainty` (half the
    query's round trip). The call's start on the database's clock is `started` + skew; the
    PHP ran after it, and NOW() truncated that to the second. So a stamp at or after the
    second of the latest possible start proves a refresh since (ours, or another that the
    boxes will pick up just the same); a stamp before the second of the earliest possible
    start proves none. A refresh earlier in that same second is counted as taken: it flags
    the boxes no earlier than ours would, so a second call would only double the reloads.
    Anything between is UNKNOWN, and the caller calls again: a second reload costs less than
    a missed refresh."""
    if reload_timestamp is None:
        return Taken.NO
    if uncertainty < timedelta(0):
        raise ValueError("uncertainty must not be negative")
    skew = database_now - read_at
    # A stamp after the database's own now was not written by a past refresh (a clock moved
    # back, a zone change, an hour of DST read twice): it proves nothing.
    if reload_timestamp > database_now + _STAMP_RESOLUTION:
        return Taken.UNKNOWN
    latest = _second_of(started + skew + uncertainty)
    earliest = _second_of(started + skew - uncertainty)
    if reload_timestamp >= latest:
        return Taken.YES
    if reload_timestamp < earliest:
        return Taken.NO
    return Taken.UNKNOWN


def _second_of(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def lost_call_taken(
    started: datetime,
    reload_timestamp: datetime | None,
    database_now: datetime | None,
    *,
    asked: datetime,
    answered: datetime,
) -> Taken:
    """`refresh_taken` for one reading of the cluster's database, asked at `asked` and
    answered at `answered` (refreshd's clock): the database's clock was read somewhere
    between, so at their midpoint within half the round trip. No clock in the answer (an
    older reader): UNKNOWN, and the caller calls again."""
    if database_now is None:
        return Taken.UNKNOWN
    half = max(answered - asked, timedelta(0)) / 2
    return refresh_taken(
        started,
        reload_timestamp,
        read_at=asked + half,
        database_now=database_now,
        uncertainty=half,
    )

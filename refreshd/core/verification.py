"""Whether a refresh was applied: pure rules over what the cluster's database showed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

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

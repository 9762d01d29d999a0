"""The store's values (states, waits, calls) and their rows: times as fixed-width UTC text.

Times are UTC text, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, always this width, so text order is
time order and `WHERE at >= '2026-03-01'` works by hand. The store takes and returns
aware datetimes; naive ones are refused (ValueError), as they are a bug. Each function
reading a row takes the columns in the order schema.py's SELECT lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from refreshd.core.ledger import LoginEntry, ServerEntry
from refreshd.core.vicidial import Outcome

__all__ = [
    "DETAIL_MAX",
    "CallRecord",
    "CredentialsWait",
    "NewCall",
    "ServerState",
    "Verification",
    "call_record",
    "call_row",
    "credentials_wait",
    "login_entry",
    "opt_text",
    "server_entry",
    "server_row",
    "server_state",
    "text",
    "time",
]

DETAIL_MAX = 1000
"""Call details are cut to this many characters; the full body belongs in the log."""


@dataclass(frozen=True)
class ServerState:
    """What the store knows about one server; all empty for a server never called."""

    name: str
    last_outcome: Outcome | None = None
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    suspended_until: datetime | None = None
    """Set by `suspend_server`; may be in the past (the caller compares with now)."""
    suspensions: int = 0
    """Consecutive suspensions since the last `ok`."""
    suspension_reason: str | None = None
    config_fingerprint: str | None = None
    first_seen: datetime | None = None


@dataclass(frozen=True)
class CredentialsWait:
    """No server may log in with these credentials before `until`."""

    name: str
    until: datetime
    reason: str
    fingerprint: str | None
    """The credentials' config fingerprint when the wait began: a reload that changes
    it ends the wait early (SPEC: a wait ends when the config changes)."""


@dataclass(frozen=True)
class Verification:
    """Whether an `ok` call's refresh was applied by every telephony server of the cluster."""

    applied: bool
    seconds: float  # from sending the call to the verdict
    detail: str | None = None  # the boxes still flagged, or why the database was unreadable
    at: datetime | None = None  # when the call was sent (as read back)


@dataclass(frozen=True)
class CallRecord:
    """One call, as kept in the history."""

    id: int
    server: str
    slot_start: datetime | None
    """The slot's window start; None for a manual `refreshd refresh`."""
    due: datetime | None
    """The run's planned start inside the slot; None for a manual refresh."""
    attempt: int
    outcome: Outcome
    at: datetime
    """When the call was sent."""
    duration_ms: int
    http_status: int | None
    servers_flagged: int | None
    detail: str | None
    """Short, already redacted text (the caller redacts; the store cannot)."""
    verification: Verification | None = None
    """For an `ok` call of a server with a database: applied or not; None before the
    verdict, or when not verified."""


@dataclass(frozen=True)
class NewCall:
    """A finished call to add to the history."""

    server: str
    slot_start: datetime | None
    due: datetime | None
    attempt: int
    outcome: Outcome
    at: datetime
    duration_ms: int
    http_status: int | None = None
    servers_flagged: int | None = None
    detail: str | None = None


# -- times -----------------------------------------------------------------------------


def text(moment: datetime) -> str:
    if moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: the state store takes aware datetimes")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def opt_text(moment: datetime | None) -> str | None:
    return None if moment is None else text(moment)


def time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def _opt_time(value: str | None) -> datetime | None:
    return None if value is None else time(value)


# -- servers ---------------------------------------------------------------------------


def server_state(row: tuple[object, ...]) -> ServerState:
    name, outcome, attempt_at, success_at, until, suspensions, reason, fingerprint, seen = row
    return ServerState(
        name=str(name),
        last_outcome=None if outcome is None else Outcome(str(outcome)),
        last_attempt_at=_opt_time(_opt_str(attempt_at)),
        last_success_at=_opt_time(_opt_str(success_at)),
        suspended_until=_opt_time(_opt_str(until)),
        suspensions=_int(suspensions),
        suspension_reason=_opt_str(reason),
        config_fingerprint=_opt_str(fingerprint),
        first_seen=_opt_time(_opt_str(seen)),
    )


def server_entry(state: ServerState, last_done: datetime | None) -> ServerEntry:
    """The ledger's entry for a server: its stored state and its latest done run."""
    return ServerEntry(
        last_done=last_done,
        last_success_at=state.last_success_at,
        last_outcome=state.last_outcome,
        last_attempt_at=state.last_attempt_at,
        suspended_until=state.suspended_until,
        suspensions=state.suspensions,
        suspension_reason=state.suspension_reason,
        fingerprint=state.config_fingerprint,
        first_seen=state.first_seen,
    )


def server_row(name: str, entry: ServerEntry) -> tuple[object, ...]:
    return (
        name,
        None if entry.last_outcome is None else str(entry.last_outcome),
        opt_text(entry.last_attempt_at),
        opt_text(entry.last_success_at),
        opt_text(entry.suspended_until),
        entry.suspensions,
        entry.suspension_reason,
        entry.fingerprint,
        opt_text(entry.first_seen),
    )


# -- credentials waits -----------------------------------------------------------------


def credentials_wait(row: tuple[object, ...]) -> CredentialsWait:
    name, until, reason, fingerprint = row
    return CredentialsWait(str(name), time(str(until)), str(reason), _opt_str(fingerprint))


def login_entry(wait: CredentialsWait) -> LoginEntry:
    return LoginEntry(wait_until=wait.until, wait_reason=wait.reason, fingerprint=wait.fingerprint)


# -- calls -----------------------------------------------------------------------------


def call_row(call: NewCall) -> tuple[object, ...]:
    detail = None if call.detail is None else call.detail[:DETAIL_MAX]
    return (
        call.server,
        opt_text(call.slot_start),
        opt_text(call.due),
        call.attempt,
        str(call.outcome),
        text(call.at),
        call.duration_ms,
        call.http_status,
        call.servers_flagged,
        detail,
    )


def call_record(row: tuple[object, ...]) -> CallRecord:
    row_id, server, slot, due, attempt, outcome, at, duration, status, flagged, detail = row[:11]
    return CallRecord(
        id=_int(row_id),
        server=str(server),
        slot_start=_opt_time(_opt_str(slot)),
        due=_opt_time(_opt_str(due)),
        attempt=_int(attempt),
        outcome=Outcome(str(outcome)),
        at=time(str(at)),
        duration_ms=_int(duration),
        http_status=None if status is None else _int(status),
        servers_flagged=None if flagged is None else _int(flagged),
        detail=_opt_str(detail),
        verification=verification((at, *row[11:])),
    )


def verification(row: tuple[object, ...]) -> Verification | None:
    """(at, applied, apply_seconds, apply_detail) as a Verification; None if not verified."""
    at, applied, seconds, detail = row
    if applied is None:
        return None
    spent = float(seconds) if isinstance(seconds, int | float) else 0.0
    return Verification(bool(applied), spent, _opt_str(detail), time(str(at)))


def verification_row(server: str, at: datetime, found: Verification) -> tuple[object, ...]:
    detail = None if found.detail is None else found.detail[:DETAIL_MAX]
    return (int(found.applied), round(found.seconds, 3), detail, server, text(at))


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"expected an integer column, got {value!r}")
    return value

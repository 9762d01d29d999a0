"""The ledger: all refreshd knows of each server and each login, and how a call changes it (pure).

The ledger is the only live state. Each process holds one `Ledger` value and replaces it
with the value `settle`, `reconfigure` or `merge` returns; the store journals the entries
that changed (`Settled.servers` / `Settled.logins`) and can rebuild the ledger from disk.
Every function here returns what changed as `Event` values too, which the shell's
`events` module turns into log lines and metrics, in one place.

A *login* is keyed by the runner's `login_key` (today the `[credentials.NAME]` table), so
every path asks the same entry whether a login may be tried.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from refreshd.core.policy import (
    LOGIN_PROVEN,
    REFUSED_LOGIN,
    Action,
    Backoff,
    Decision,
    decide,
)
from refreshd.core.slots import Slot
from refreshd.core.vicidial import Attempt, Outcome

__all__ = [
    "Call",
    "Event",
    "Kind",
    "Ledger",
    "LoginEntry",
    "ServerEntry",
    "Settled",
    "merge",
    "reconfigure",
    "settle",
]


@dataclass(frozen=True)
class ServerEntry:
    """One server: its last outcome, its latest done run and its suspension."""

    last_done: datetime | None = None
    """The due instant of the latest scheduled run that succeeded: every run due at or
    before it is done or superseded (one refresh per slot rests on this)."""
    last_success_at: datetime | None = None
    last_outcome: Outcome | None = None
    last_attempt_at: datetime | None = None
    suspended_until: datetime | None = None
    """May lie in the past: a suspension that ran out, still remembered so that the next
    success logs `server.resumed`."""
    suspensions: int = 0
    suspension_reason: str | None = None
    fingerprint: str | None = None
    """The server's config fingerprint when last configured: a change ends a suspension."""

    def suspended_at(self, now: datetime) -> datetime | None:
        """The suspension's end, if one runs at `now`."""
        until = self.suspended_until
        return until if until is not None and until > now else None


@dataclass(frozen=True)
class LoginEntry:
    """One VICIdial login: its wait after a refused login, and whether it is proven good."""

    wait_until: datetime | None = None
    wait_reason: str | None = None
    fingerprint: str | None = None
    """The login (user and password, hashed) the wait was for: a new password ends it."""
    proven: bool = False
    """VICIdial accepted this login since this process configured it (never journaled: a
    restart starts careful)."""
    in_flight: int = 0
    """Calls logging in with it now, in this process (never journaled)."""

    def waiting_at(self, now: datetime) -> datetime | None:
        """The wait's end, if one runs at `now`."""
        until = self.wait_until
        return until if until is not None and until > now else None


@dataclass(frozen=True)
class Ledger:
    """Every server's and every login's entry; missing ones are empty entries."""

    servers: Mapping[str, ServerEntry] = field(default_factory=dict)
    logins: Mapping[str, LoginEntry] = field(default_factory=dict)

    def server(self, name: str) -> ServerEntry:
        return self.servers.get(name) or _EMPTY_SERVER

    def login(self, key: str) -> LoginEntry:
        return self.logins.get(key) or _EMPTY_LOGIN

    def with_servers(self, changed: Mapping[str, ServerEntry]) -> Ledger:
        if not changed:
            return self
        return replace(self, servers={**self.servers, **changed})

    def with_logins(self, changed: Mapping[str, LoginEntry]) -> Ledger:
        if not changed:
            return self
        return replace(self, logins={**self.logins, **changed})


_EMPTY_SERVER = ServerEntry()
_EMPTY_LOGIN = LoginEntry()


class Kind(enum.StrEnum):
    """What changed; the value is the log line's event name."""

    REFRESH_SUCCEEDED = "refresh.succeeded"
    REFRESH_RETRYING = "refresh.retrying"
    REFRESH_FAILED = "refresh.failed"
    SERVER_SUSPENDED = "server.suspended"
    SERVER_RESUMED = "server.resumed"
    CREDENTIALS_SUSPENDED = "credentials.suspended"
    CREDENTIALS_RESUMED = "credentials.resumed"
    REFRESH_SKIPPED = "refresh.skipped"
    SLOT_MISSED = "slot.missed"
    SERVER_UNPLANNED = "server.unplanned"


@dataclass(frozen=True)
class Event:
    """One change worth telling: its kind and the fields of its log line."""

    kind: Kind
    fields: Mapping[str, object]


@dataclass(frozen=True)
class Call:
    """Where one call belongs: which server and login, which run and attempt."""

    server: str
    login: str
    credentials: str
    """The `[credentials.NAME]` table, for messages."""
    attempt: int = 1
    slot: Slot | None = None
    """None: a manual `refreshd refresh`."""
    due: datetime | None = None
    retry_until: datetime | None = None
    login_fingerprint: str | None = None

    @property
    def manual(self) -> bool:
        return self.slot is None


@dataclass(frozen=True)
class Settled:
    """A call's consequences: the new ledger, the entries to journal, what to tell."""

    ledger: Ledger
    decision: Decision
    servers: Mapping[str, ServerEntry]
    logins: Mapping[str, LoginEntry]
    events: tuple[Event, ...]
    run_done: bool
    """The call's run is newly done: the journal records (server, due)."""


def settle(
    ledger: Ledger,
    call: Call,
    attempt: Attempt,
    *,
    backoff: Backoff,
    rng: random.Random,
    now: datetime,
) -> Settled:
    """Decide what a finished call means and apply it: the one place where an outcome
    changes a server (done, suspended, resumed) or a login (proven, waiting, resumed)."""
    before = ledger.server(call.server)
    outcome = attempt.answer.outcome
    decision = decide(
        outcome,
        attempt=call.attempt,
        now=now,
        retry_until=call.retry_until or attempt.started_at,
        suspensions=before.suspensions,
        backoff=backoff,
        rng=rng,
    )
    server = _server_after(before, call, attempt, decision)
    login_before = ledger.login(call.login)
    login = _login_after(login_before, call, outcome, decision)
    logins = {call.login: login} if login != login_before else {}
    run_done = server.last_done != before.last_done
    events = _call_events(call, attempt, decision, was_suspended=before.suspended_until is not None)
    if login_before.waiting_at(now) is not None and login.wait_until is None:
        events += (_resumed_login(call, "a login worked"),)
    return Settled(
        ledger=ledger.with_servers({call.server: server}).with_logins(logins),
        decision=decision,
        servers={call.server: server},
        logins=logins,
        events=events,
        run_done=run_done,
    )


def _server_after(
    entry: ServerEntry, call: Call, attempt: Attempt, decision: Decision
) -> ServerEntry:
    outcome = attempt.answer.outcome
    entry = replace(entry, last_outcome=outcome, last_attempt_at=attempt.started_at)
    if outcome is Outcome.OK:
        done = entry.last_done
        if call.due is not None and (done is None or call.due > done):
            done = call.due
        success = entry.last_success_at
        if success is None or attempt.started_at > success:
            success = attempt.started_at
        return replace(
            entry,
            last_done=done,
            last_success_at=success,
            suspended_until=None,
            suspensions=0,
            suspension_reason=None,
        )
    if decision.action is Action.SUSPEND_SERVER:
        return replace(
            entry,
            suspended_until=decision.at,
            suspensions=decision.suspensions,
            suspension_reason=decision.reason,
        )
    return entry


def _login_after(entry: LoginEntry, call: Call, outcome: Outcome, decision: Decision) -> LoginEntry:
    if decision.action is Action.WAIT_CREDENTIALS and decision.at is not None:
        return replace(
            entry,
            wait_until=decision.at,
            wait_reason=decision.reason,
            fingerprint=call.login_fingerprint,
            proven=False,
        )
    if outcome in LOGIN_PROVEN:
        # A login that worked ends any wait (SPEC: a success ends the credentials wait).
        return replace(entry, proven=True, wait_until=None, wait_reason=None)
    if outcome in REFUSED_LOGIN:
        return replace(entry, proven=False)
    return entry


def _call_events(
    call: Call, attempt: Attempt, decision: Decision, *, was_suspended: bool
) -> tuple[Event, ...]:
    answer = attempt.answer
    fields: dict[str, object] = {
        "server": call.server,
        "outcome": str(answer.outcome),
        "attempt": call.attempt,
        "duration_ms": attempt.duration_ms,
        "trigger": "manual" if call.manual else "schedule",
    }
    if call.slot is not None:
        fields["slot"] = call.slot.start
        if call.due is not None and call.due != call.slot.start:
            fields["due"] = call.due
    if answer.servers_flagged is not None:
        fields["servers_flagged"] = answer.servers_flagged
    if answer.http_status is not None:
        fields["http_status"] = answer.http_status
    if answer.outcome is Outcome.OK:
        ok = Event(Kind.REFRESH_SUCCEEDED, fields)
        if not was_suspended:
            return (ok,)
        return ok, Event(
            Kind.SERVER_RESUMED, {"server": call.server, "reason": "refresh succeeded"}
        )
    fields["detail"] = answer.detail
    if answer.outcome is Outcome.BAD_REQUEST:
        fields["config_error"] = (
            "VICIdial refused the request itself: check [client].source and the server's api_url"
        )
    if decision.action is Action.RETRY and not call.manual:
        return (Event(Kind.REFRESH_RETRYING, {"retry_at": decision.at, **fields}),)
    reason = decision.reason
    if call.manual and decision.action is Action.GIVE_UP:
        reason = f"{answer.outcome}: a manual refresh makes one attempt"
    failed = Event(Kind.REFRESH_FAILED, {"reason": reason, **fields})
    if decision.action is Action.SUSPEND_SERVER:
        return failed, Event(
            Kind.SERVER_SUSPENDED,
            {
                "server": call.server,
                "outcome": str(answer.outcome),
                "suspended_until": decision.at,
                "suspensions": decision.suspensions,
                "reason": decision.reason,
            },
        )
    if decision.action is Action.WAIT_CREDENTIALS:
        return failed, Event(
            Kind.CREDENTIALS_SUSPENDED,
            {
                "credentials": call.credentials,
                "server": call.server,
                "outcome": str(answer.outcome),
                "suspended_until": decision.at,
                "reason": decision.reason,
            },
        )
    return (failed,)


def _resumed_login(call: Call, reason: str) -> Event:
    return Event(
        Kind.CREDENTIALS_RESUMED,
        {"credentials": call.credentials, "reason": reason},
    )


@dataclass(frozen=True)
class Reconfigured:
    """What a (re)configuration changed: the ledger, entries to journal, what to tell."""

    ledger: Ledger
    servers: Mapping[str, ServerEntry]
    logins: Mapping[str, LoginEntry]
    events: tuple[Event, ...]


def reconfigure(
    ledger: Ledger,
    *,
    server_fingerprints: Mapping[str, str],
    login_fingerprints: Mapping[str, str],
    changed_logins: frozenset[str],
    now: datetime,
) -> Reconfigured:
    """Apply a config: a server whose fingerprint changed since its suspension began is
    resumed (SPEC: a change of the server's or the credentials' config ends it), a login
    whose password changed since its wait began stops waiting, and a login whose config
    changed is unproven again (the next call is one careful login)."""
    servers: dict[str, ServerEntry] = {}
    events: list[Event] = []
    for name, fingerprint in server_fingerprints.items():
        entry = ledger.server(name)
        if entry.fingerprint == fingerprint:
            continue
        if entry.fingerprint is not None and entry.suspended_at(now) is not None:
            entry = replace(entry, suspended_until=None, suspension_reason=None, suspensions=0)
            events.append(Event(Kind.SERVER_RESUMED, {"server": name, "reason": "config changed"}))
        servers[name] = replace(entry, fingerprint=fingerprint)
    logins: dict[str, LoginEntry] = {}
    for key, fingerprint in login_fingerprints.items():
        login = ledger.login(key)
        fresh = login
        if key in changed_logins:
            fresh = replace(fresh, proven=False)
        if fresh.wait_until is not None and not _wait_for(fresh, fingerprint):
            fresh = replace(fresh, wait_until=None, wait_reason=None, fingerprint=None)
            if login.waiting_at(now) is not None:
                events.append(
                    Event(
                        Kind.CREDENTIALS_RESUMED,
                        {"credentials": key, "reason": "credentials changed"},
                    )
                )
        if fresh != login:
            logins[key] = fresh
    return Reconfigured(
        ledger=ledger.with_servers(servers).with_logins(logins),
        servers=servers,
        logins=logins,
        events=tuple(events),
    )


def _wait_for(entry: LoginEntry, fingerprint: str) -> bool:
    """Whether a wait was for the login configured now (one without a fingerprint, from
    an older state file, is taken to be)."""
    return entry.fingerprint is None or entry.fingerprint == fingerprint


@dataclass(frozen=True)
class Merged:
    """What another process's journal taught this one."""

    ledger: Ledger
    servers: frozenset[str]
    """Servers whose timing may have changed: to be re-planned."""
    logins: frozenset[str]
    """Logins whose wait changed: their servers are to be re-planned."""
    events: tuple[Event, ...]


def merge(
    ledger: Ledger,
    stored: Ledger,
    *,
    server_logins: Mapping[str, str],
    login_fingerprints: Mapping[str, str],
    now: datetime,
) -> Merged:
    """Take in what another process (a manual `refreshd refresh`, `check --online`) wrote.

    Only evidence moves the ledger, never the absence of a row (this process's own write
    may have failed on a full disk): a newer success ends the server's suspension and its
    login's wait; a newer done run is adopted; a suspension or a wait (for the login as
    configured here) outlasting the one known here is adopted. `server_logins` maps each
    configured server to its login key.
    """
    servers: dict[str, ServerEntry] = {}
    events: list[Event] = []
    worked: set[str] = set()
    for name, login in server_logins.items():
        theirs = stored.servers.get(name)
        if theirs is None:
            continue
        mine = ledger.server(name)
        if _newer(theirs.last_success_at, mine.last_success_at):
            worked.add(login)
        merged, said = _merge_server(name, mine, theirs, now)
        if merged is not None:
            servers[name] = merged
            events.extend(said)
    logins: dict[str, LoginEntry] = {}
    for key, fingerprint in login_fingerprints.items():
        mine_login = ledger.login(key)
        merged_login, said = _merge_login(
            key, mine_login, stored.login(key), fingerprint, now, worked=key in worked
        )
        if merged_login is not None:
            logins[key] = merged_login
            events.extend(said)
    return Merged(
        ledger=ledger.with_servers(servers).with_logins(logins),
        servers=frozenset(servers),
        logins=frozenset(logins),
        events=tuple(events),
    )


def _newer(theirs: datetime | None, mine: datetime | None) -> bool:
    return theirs is not None and (mine is None or theirs > mine)


def _merge_server(
    name: str, mine: ServerEntry, theirs: ServerEntry, now: datetime
) -> tuple[ServerEntry | None, list[Event]]:
    changes: dict[str, object] = {}
    events: list[Event] = []
    if _newer(theirs.last_done, mine.last_done):
        changes["last_done"] = theirs.last_done
    if _newer(theirs.last_success_at, mine.last_success_at):
        changes.update(
            last_success_at=theirs.last_success_at,
            last_outcome=theirs.last_outcome,
            last_attempt_at=theirs.last_attempt_at,
            suspended_until=None,
            suspensions=0,
            suspension_reason=None,
        )
        if mine.suspended_at(now) is not None:
            events.append(
                Event(Kind.SERVER_RESUMED, {"server": name, "reason": "a manual refresh succeeded"})
            )
    elif theirs.suspended_until is not None and theirs.suspended_until > max(
        now, mine.suspended_until or now
    ):
        changes.update(
            suspended_until=theirs.suspended_until,
            suspensions=theirs.suspensions,
            suspension_reason=theirs.suspension_reason,
            last_outcome=theirs.last_outcome,
            last_attempt_at=theirs.last_attempt_at,
        )
        events.append(
            Event(
                Kind.SERVER_SUSPENDED,
                {
                    "server": name,
                    "outcome": str(theirs.last_outcome) if theirs.last_outcome else None,
                    "suspended_until": theirs.suspended_until,
                    "suspensions": theirs.suspensions,
                    "reason": f"{theirs.suspension_reason} (by a manual refresh)",
                },
            )
        )
    if not changes:
        return None, events
    return replace(mine, **changes), events  # type: ignore[arg-type]


def _merge_login(
    key: str,
    mine: LoginEntry,
    theirs: LoginEntry,
    fingerprint: str,
    now: datetime,
    *,
    worked: bool,
) -> tuple[LoginEntry | None, list[Event]]:
    waiting = mine.waiting_at(now)
    if worked and waiting is not None:
        fresh = replace(mine, wait_until=None, wait_reason=None, fingerprint=None)
        reason = "a manual refresh logged in"
        event = Event(Kind.CREDENTIALS_RESUMED, {"credentials": key, "reason": reason})
        return fresh, [event]
    until = theirs.waiting_at(now)
    if until is not None and until > (waiting or now) and _wait_for(theirs, fingerprint):
        fresh = replace(
            mine,
            wait_until=until,
            wait_reason=theirs.wait_reason,
            fingerprint=theirs.fingerprint,
            proven=False,
        )
        event = Event(
            Kind.CREDENTIALS_SUSPENDED,
            {
                "credentials": key,
                "suspended_until": until,
                "reason": f"{theirs.wait_reason} (by a manual refresh)",
            },
        )
        return fresh, [event]
    return None, []

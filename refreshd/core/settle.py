"""What a finished call means for the ledger: decide, then apply, then say what changed (pure)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from refreshd.core.ledger import Call, Event, Kind, Ledger, LoginEntry, ServerEntry
from refreshd.core.policy import (
    BUDGET_REASON,
    LOGIN_PROVEN,
    REFUSED_LOGIN,
    VICIDIAL_LOCKOUT,
    WAIT_OF,
    Action,
    Backoff,
    Decision,
    WaitKind,
    decide,
)
from refreshd.core.vicidial import Attempt, Outcome

__all__ = ["REFRESHED", "Settled", "learn", "login_after", "settle"]

# The outcomes that make a run done: an `ok`, or a lost call found taken (no call made, no
# login counted: a settled run is never a login, so login_after leaves the login alone).
REFRESHED = frozenset({Outcome.OK, Outcome.SETTLED})


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
    login = login_after(
        login_before, call, outcome, decision, answer_unreadable=attempt.answer.unreadable
    )
    login, paused = _count_failed_login(login, login_before, call, attempt, now)
    logins = {call.login: login} if login != login_before else {}
    run_done = server.last_done != before.last_done
    events = _call_events(call, attempt, decision, was_suspended=before.suspended_until is not None)
    if login_before.waiting_at(now) is not None and login.wait_until is None:
        events += (_resumed_login(call, "a login worked"),)
    events += paused
    return Settled(
        ledger=ledger.with_servers({call.server: server}).with_logins(logins),
        decision=decision,
        servers={call.server: server},
        logins=logins,
        events=events,
        run_done=run_done,
    )


def learn(
    ledger: Ledger,
    call: Call,
    outcome: Outcome,
    *,
    backoff: Backoff,
    rng: random.Random,
    now: datetime,
) -> tuple[Ledger, Mapping[str, LoginEntry], tuple[Event, ...]]:
    """What a login probe (`check --online`) teaches about its login, and nothing about
    any server: a good login proves it, a refused one starts the wait a refresh would."""
    decision = decide(
        outcome, attempt=1, now=now, retry_until=now, suspensions=0, backoff=backoff, rng=rng
    )
    before = ledger.login(call.login)
    if decision.action is not Action.WAIT_CREDENTIALS and outcome not in LOGIN_PROVEN:
        return ledger, {}, ()
    after = login_after(before, call, outcome, decision)
    events: tuple[Event, ...] = ()
    if decision.action is Action.WAIT_CREDENTIALS:
        events = (
            Event(
                Kind.CREDENTIALS_SUSPENDED,
                {
                    "credentials": call.credentials,
                    "outcome": str(outcome),
                    "wait": str(WAIT_OF[outcome]),
                    "suspended_until": decision.at,
                    "reason": f"{decision.reason} (check --online)",
                },
            ),
        )
    elif before.waiting_at(now) is not None:
        events = (_resumed_login(call, "check --online logged in"),)
    if after == before:
        return ledger, {}, events
    return ledger.with_logins({call.login: after}), {call.login: after}, events


def _server_after(
    entry: ServerEntry, call: Call, attempt: Attempt, decision: Decision
) -> ServerEntry:
    outcome = attempt.answer.outcome
    entry = replace(entry, last_outcome=outcome, last_attempt_at=attempt.started_at)
    if outcome in REFRESHED:
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


def login_after(
    entry: LoginEntry,
    call: Call,
    outcome: Outcome,
    decision: Decision,
    *,
    answer_unreadable: bool = False,
) -> LoginEntry:
    if decision.action is Action.WAIT_CREDENTIALS and decision.at is not None:
        return replace(
            entry,
            wait_until=decision.at,
            wait_reason=decision.reason,
            wait_kind=WAIT_OF[outcome],
            fingerprint=call.login_fingerprint,
            proven=frozenset(),
        )
    if outcome in LOGIN_PROVEN:
        # A login that worked ends the wait its own password earned (SPEC: a success ends
        # the credentials wait), not one another table's password for the same user
        # earned: that one is still wrong. VICIdial resets the user's failure count.
        proven = entry.proven | {call.login_fingerprint or ""}
        if entry.fingerprint not in (None, call.login_fingerprint):
            return replace(entry, proven=proven, failed_logins=())
        return replace(entry, proven=proven, wait_until=None, wait_reason=None, failed_logins=())
    if outcome in REFUSED_LOGIN:
        return replace(entry, proven=frozenset())
    if answer_unreadable:
        # No answer read: for all we know the password changed on the dialer and this was
        # a failed login. Proven no more, so the next calls are one at a time and counted.
        return replace(entry, proven=entry.proven - {call.login_fingerprint or ""})
    return entry


def _count_failed_login(
    login: LoginEntry, before: LoginEntry, call: Call, attempt: Attempt, now: datetime
) -> tuple[LoginEntry, tuple[Event, ...]]:
    """A refused login is a failed login; an unreadable answer to an unproven password may
    have been one. Both are counted, and the third in 15 minutes pauses every login as
    the user until the oldest of them is 15 minutes old (`policy.FAILED_LOGIN_LIMIT`)."""
    answer = attempt.answer
    maybe = answer.unreadable and (call.login_fingerprint or "") not in before.proven
    if answer.outcome is not Outcome.AUTH_FAILED and not maybe:
        return login, ()
    recent = tuple(t for t in login.failed_logins if t > now - VICIDIAL_LOCKOUT)
    login = replace(login, failed_logins=(*recent, attempt.started_at))
    until = login.budget_spent_until(now)
    if until is None or before.budget_spent_until(now) is not None:
        return login, ()
    fields = {
        "credentials": call.credentials,
        "server": call.server,
        "outcome": str(attempt.answer.outcome),
        "wait": str(WaitKind.FAILED_LOGIN_BUDGET),
        "suspended_until": until,
        "reason": BUDGET_REASON,
    }
    return login, (Event(Kind.CREDENTIALS_SUSPENDED, fields),)


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
    if answer.outcome in REFRESHED:
        return _done_events(call, attempt, fields, was_suspended=was_suspended)
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
                "wait": str(WAIT_OF[answer.outcome]),
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


def _done_events(
    call: Call, attempt: Attempt, fields: dict[str, object], *, was_suspended: bool
) -> tuple[Event, ...]:
    """A run done: `refresh.succeeded`, or `refresh.settled` (the run, when its lost call
    started, the stamp that proved it: no call was made); a suspension ended."""
    done = Event(Kind.REFRESH_SUCCEEDED, fields)
    if attempt.answer.outcome is Outcome.SETTLED:
        settled: dict[str, object] = {"server": call.server, "due": call.due}
        if call.slot is not None:
            settled["slot"] = call.slot.start
        settled.update(started=attempt.started_at, reload_timestamp=attempt.reload_timestamp)
        settled.update(detail=attempt.answer.detail, trigger=fields["trigger"])
        done = Event(Kind.REFRESH_SETTLED, settled)
    if not was_suspended:
        return (done,)
    resumed = Event(Kind.SERVER_RESUMED, {"server": call.server, "reason": "refresh succeeded"})
    return done, resumed

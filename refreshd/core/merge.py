"""A config applied to the ledger, and another process's journal merged into it (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from refreshd.core.ledger import Event, Kind, Ledger, LoginEntry, Logins, ServerEntry

__all__ = ["Merged", "Reconfigured", "merge", "reconfigure"]


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
    logins: Logins,
    changed_logins: frozenset[str],
    now: datetime,
) -> Reconfigured:
    """Apply a config: a server seen for the first time gets its `first_seen`, a server
    whose fingerprint changed since its suspension began is resumed (SPEC: a change of the
    server's or the credentials' config ends it), a login whose password changed since its
    wait began stops waiting, and a login whose config changed is unproven again (the next
    call is one careful login)."""
    servers: dict[str, ServerEntry] = {}
    events: list[Event] = []
    for name, fingerprint in server_fingerprints.items():
        entry = ledger.server(name)
        updated = entry if entry.first_seen is not None else replace(entry, first_seen=now)
        if entry.fingerprint != fingerprint:
            if entry.fingerprint is not None and entry.suspended_at(now) is not None:
                updated = replace(
                    updated, suspended_until=None, suspension_reason=None, suspensions=0
                )
                fields = {"server": name, "reason": "config changed"}
                events.append(Event(Kind.SERVER_RESUMED, fields))
            updated = replace(updated, fingerprint=fingerprint)
        if updated != entry:
            servers[name] = updated
    changed: dict[str, LoginEntry] = _adopt_table_keyed_waits(ledger, logins)
    ledger = ledger.with_logins(changed)
    for key, fingerprints in logins.fingerprints.items():
        login = ledger.login(key)
        fresh = login
        if key in changed_logins:
            fresh = replace(fresh, proven=frozenset())
        if fresh.wait_until is not None and not _wait_for(fresh, fingerprints):
            fresh = replace(fresh, wait_until=None, wait_reason=None, fingerprint=None)
            if login.waiting_at(now) is not None:
                fields = {"credentials": logins.name(key), "reason": "credentials changed"}
                events.append(Event(Kind.CREDENTIALS_RESUMED, fields))
        if fresh != login:
            changed[key] = fresh
    return Reconfigured(
        ledger=ledger.with_servers(servers).with_logins(changed),
        servers=servers,
        logins=changed,
        events=tuple(events),
    )


def _adopt_table_keyed_waits(ledger: Ledger, logins: Logins) -> dict[str, LoginEntry]:
    """State files before logins were keyed by user kept waits under the credentials
    table's name: such a wait moves to its user (a wait is never dropped by an upgrade)."""
    moved: dict[str, LoginEntry] = {}
    for table, key in logins.of_table.items():
        old = ledger.logins.get(table)
        if table in logins.fingerprints or old is None or old.wait_until is None:
            continue
        mine = moved.get(key) or ledger.login(key)
        if mine.wait_until is None or mine.wait_until < old.wait_until:
            moved[key] = replace(
                mine,
                wait_until=old.wait_until,
                wait_reason=old.wait_reason,
                wait_kind=old.wait_kind,
                fingerprint=old.fingerprint,
            )
        moved[table] = LoginEntry()  # journaled as the old row's deletion
    return moved


def _wait_for(entry: LoginEntry, fingerprints: frozenset[str]) -> bool:
    """Whether a wait was for a password configured now (one without a fingerprint, from
    an older state file, is taken to be)."""
    return entry.fingerprint is None or entry.fingerprint in fingerprints


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
    logins: Logins,
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
    learnt: dict[str, LoginEntry] = {}
    for key, fingerprints in logins.fingerprints.items():
        mine_login = ledger.login(key)
        merged_login, said = _merge_login(
            logins.name(key),
            mine_login,
            stored.login(key),
            fingerprints,
            now,
            worked=key in worked,
        )
        if merged_login is not None:
            learnt[key] = merged_login
            events.extend(said)
    return Merged(
        ledger=ledger.with_servers(servers).with_logins(learnt),
        servers=frozenset(servers),
        logins=frozenset(learnt),
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


def _failures_union(mine: LoginEntry, theirs: LoginEntry) -> tuple[datetime, ...]:
    if set(theirs.failed_logins) <= set(mine.failed_logins):
        return mine.failed_logins
    return tuple(sorted({*mine.failed_logins, *theirs.failed_logins}))


def _merge_login(
    name: str,
    mine: LoginEntry,
    theirs: LoginEntry,
    fingerprints: frozenset[str],
    now: datetime,
    *,
    worked: bool,
) -> tuple[LoginEntry | None, list[Event]]:
    spent = _failures_union(mine, theirs)
    if spent != mine.failed_logins:
        # Another process's calls spent the same budget: each counts once.
        mine = replace(mine, failed_logins=spent)
        fresh, said = _merge_login(name, mine, theirs, fingerprints, now, worked=worked)
        return fresh or mine, said
    waiting = mine.waiting_at(now)
    if worked and waiting is not None:
        fresh = replace(mine, wait_until=None, wait_reason=None, fingerprint=None)
        reason = "a manual refresh logged in"
        event = Event(Kind.CREDENTIALS_RESUMED, {"credentials": name, "reason": reason})
        return fresh, [event]
    until = theirs.waiting_at(now)
    if until is not None and until > (waiting or now) and _wait_for(theirs, fingerprints):
        fresh = replace(
            mine,
            wait_until=until,
            wait_reason=theirs.wait_reason,
            wait_kind=theirs.wait_kind,
            fingerprint=theirs.fingerprint,
            proven=frozenset(),
        )
        event = Event(
            Kind.CREDENTIALS_SUSPENDED,
            {
                "credentials": name,
                "wait": str(theirs.wait_kind),
                "suspended_until": until,
                "reason": f"{theirs.wait_reason} (by a manual refresh)",
            },
        )
        return fresh, [event]
    return None, []

"""The ledger: all refreshd knows of each server and each login, as frozen values (pure).

The ledger is the only live state. Each process holds one `Ledger` value and replaces it
with the one `core.settle` (after a call) or `core.merge` (a config, another process's
journal) returns; the store journals the entries that changed, in one transaction, and
can rebuild the ledger from disk. Those functions also return what changed as `Event`
values, which the shell's `events` module turns into log lines and metrics, in one place.

A *login* is keyed by the VICIdial user it logs in as (`login_key`), whatever
`[credentials.NAME]` table or `api_url` names it: VICIdial counts failed logins per user,
so every table and every path asks the same entry whether a login may be tried.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from refreshd.core.policy import LoginWait, WaitKind, failed_login_budget_until, login_wait
from refreshd.core.slots import Slot
from refreshd.core.vicidial import Outcome

__all__ = [
    "Call",
    "Event",
    "Kind",
    "Ledger",
    "LoginEntry",
    "Logins",
    "ServerEntry",
    "login_key",
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
    first_seen: datetime | None = None
    """When a daemon first had the server in its config: the alerts' reference for a
    server that has never succeeded."""

    def suspended_at(self, now: datetime) -> datetime | None:
        """The suspension's end, if one runs at `now`."""
        until = self.suspended_until
        return until if until is not None and until > now else None


@dataclass(frozen=True)
class LoginEntry:
    """One VICIdial login (a user): its wait after a refused login, and which of the
    passwords configured for it VICIdial has accepted."""

    wait_until: datetime | None = None
    wait_reason: str | None = None
    fingerprint: str | None = None
    """The login (user and password, hashed) the wait was for: a new password ends it."""
    proven: frozenset[str] = frozenset()
    """Fingerprints of the passwords VICIdial accepted for this user since this process
    configured it, none since a refusal (never journaled: a restart starts careful). A
    password accepted says nothing of another table's password for the same user."""
    in_flight: int = 0
    """Calls logging in with it now, in this process (never journaled)."""
    failed_logins: tuple[datetime, ...] = ()
    """When calls as this user were refused, or ended without a readable answer while
    their password was unproven (each may have been a failed login), since the last
    login that worked, oldest first; journaled, so every process spends one budget."""
    wait_kind: WaitKind = WaitKind.REFUSED_LOGIN
    """What started the wait (`policy.WAIT_OF`); read only while `wait_until` is set."""

    def waiting_at(self, now: datetime) -> datetime | None:
        """The wait's end, if one runs at `now`."""
        until = self.wait_until
        return until if until is not None and until > now else None

    def gate_wait(self, now: datetime, *, set_aside: datetime | None = None) -> LoginWait | None:
        """The wait that holds this login back at `now` (`policy.login_wait`), if any;
        `set_aside`: a journaled wait an operator forced past, which then does not bind."""
        until = self.wait_until
        wait = None
        if until is not None and until != set_aside:
            wait = LoginWait(until, self.wait_kind, self.wait_reason or "a refused login")
        return login_wait(wait, self.failed_logins, now)

    def budget_spent_until(self, now: datetime) -> datetime | None:
        """The end of a pause after too many (maybe) failed logins, if one runs at `now`."""
        return failed_login_budget_until(self.failed_logins, now)


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


def login_key(user: str) -> str:
    """The ledger's key for a VICIdial user: MySQL compares user names without case."""
    return user.casefold()


@dataclass(frozen=True)
class Logins:
    """The config's logins: the key each `[credentials.NAME]` table logs in with, and the
    fingerprints of the passwords configured for each key (a wait ends when none of them
    is the one it was for)."""

    of_table: Mapping[str, str] = field(default_factory=dict)
    fingerprints: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def name(self, key: str) -> str:
        """How messages name a login: its tables."""
        return self._names.get(key, key)

    @functools.cached_property
    def _names(self) -> dict[str, str]:
        # Once per config: `name` is asked for every call, and a fleet may have a table
        # per server.
        tables: dict[str, list[str]] = {}
        for table, key in self.of_table.items():
            tables.setdefault(key, []).append(table)
        return {key: ", ".join(sorted(names)) for key, names in tables.items()}


class Kind(enum.StrEnum):
    """What changed; the value is the log line's event name."""

    REFRESH_SUCCEEDED = "refresh.succeeded"
    REFRESH_SETTLED = "refresh.settled"  # a lost call's run found done in the database
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
    """How messages name the login: its `[credentials.NAME]` tables."""
    attempt: int = 1
    slot: Slot | None = None
    """None: a manual `refreshd refresh`."""
    due: datetime | None = None
    retry_until: datetime | None = None
    login_fingerprint: str | None = None

    @property
    def manual(self) -> bool:
        return self.slot is None

"""The login gate's first half, part of the runner: "may this login be tried now?" asked of
the ledger (the one place that answers, for every path), a call counted in flight until it
ends, a password proven. Its second half, an unproven login's shared lease across
instances, is `Runner.confirm`."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime

from refreshd.claiming import Claiming
from refreshd.clock import Clock
from refreshd.core.ledger import Ledger, LoginEntry
from refreshd.core.policy import LoginWait, credentials_attempt_allowed

__all__ = ["LoginGate"]


class LoginGate:
    """Mixed into runner.Runner, which sets these attributes."""

    _lock: threading.RLock | threading.Lock
    _ledger: Ledger
    _set_aside: dict[str, datetime]
    _leased: set[str]
    claims: Claiming | None
    clock: Clock

    def wait_of(self, login: str, now: datetime) -> LoginWait | None:
        """The wait that holds `login` back at `now`, if any: one that binds this process
        (--force sets journaled ones aside), or a spent failed-login budget (which --force
        does not lift); with its kind and reason (`policy.login_wait`)."""
        return self._ledger.login(login).gate_wait(now, set_aside=self._set_aside.get(login))

    def waiting(self, login: str, now: datetime) -> datetime | None:
        """Until when the login may not be tried, if it may not at `now`."""
        wait = self.wait_of(login, now)
        return None if wait is None else wait.until

    def why_waiting(self, login: str, now: datetime) -> str:
        """The reason behind `waiting`, for a person."""
        wait = self.wait_of(login, now)
        return "" if wait is None else wait.reason

    def try_start(self, login: str, password: str, now: datetime) -> bool:
        """May one more call log in as `login` with the password fingerprinted `password`
        now? If so it counts as in flight until `finished`. The one place that answers,
        for every path."""
        with self._lock:
            entry = self._ledger.login(login)
            allowed = credentials_attempt_allowed(
                wait_until=self.waiting(login, now),
                logins_in_flight=entry.in_flight,
                proven=password in entry.proven,
                now=now,
            )
            if allowed:
                self._set_login(login, replace(entry, in_flight=entry.in_flight + 1))
            return allowed

    def finished(self, login: str) -> None:
        with self._lock:
            entry = self._ledger.login(login)
            self._set_login(login, replace(entry, in_flight=max(0, entry.in_flight - 1)))
            leased = login in self._leased
            self._leased.discard(login)
        if leased and self.claims is not None:
            self.claims.free_login(login)

    def prove(self, login: str, password: str) -> bool:
        """VICIdial accepted the login: more calls may start at once. True when it just
        became proven."""
        with self._lock:
            entry = self._ledger.login(login)
            if password in entry.proven:
                return False
            self._set_login(login, replace(entry, proven=entry.proven | {password}))
            return True

    def set_aside_waits(self) -> None:
        """The operator forced calls now (`--force`): the waits journaled so far do not
        hold this process back, but the rest of the gate does (one login at a time until
        one works). What its calls learn is settled and journaled as always: a success ends
        the wait, a refused login starts a new one, which binds (this process's other calls
        are skipped)."""
        with self._lock:
            self._set_aside = {
                key: entry.wait_until
                for key, entry in self._ledger.logins.items()
                if entry.wait_until is not None
            }

    def _set_login(self, login: str, entry: LoginEntry) -> None:
        self._ledger = self._ledger.with_logins({login: entry})

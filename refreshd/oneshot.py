"""A one-shot command's claims on a shared store (`refresh` and `check --online` beside a
fleet, docs/HA.md): the logins' shared leases the daemons take (claiming.Claiming), so a
manual login is never tried while another instance tries the same unproven one, nor the
other way round; and the runs' claims looked at, so that a manual refresh is not sent while
an instance's call for that server is out. Where a daemon skips and looks again later (it
has a schedule to come back with), a one-shot waits, up to its patience, then says why not.

On a state file (SQLite) the same, in the file: one daemon per file (instance.py), but any
number of one-shots beside it and beside each other, whose logins would otherwise overlap
before the first refusal is journaled (four at once cost four failed logins)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta

from refreshd.claiming import Claiming, lease_of
from refreshd.clock import Clock
from refreshd.config import Config
from refreshd.config.state import default_instance
from refreshd.events import Events
from refreshd.shared.claims import CALLED, LOGIN_PREFIX
from refreshd.shared.instances import Instance
from refreshd.tickets import Refused

__all__ = ["OneShotClaims", "one_shot_claims", "patience_of"]

WAIT_LOOK = 0.2
"""How often (seconds) a one-shot looks again at a lease or a call it waits for: an
unproven login is answered in a fraction of a second, and an operator is waiting."""


def patience_of(config: Config) -> timedelta:
    """How long a one-shot waits for another instance's login or call: the longest a live
    holder's call lasts (`[client] timeout`) plus a lease (a dead holder's lapses within
    one). Past it something is wrong with the holder: the command says so and stops."""
    return config.client.timeout + lease_of(config)


def one_shot_claims(
    config: Config, store: object, clock: Clock, events: Events
) -> OneShotClaims | None:
    """The claims of a one-shot command's runner on `store`'s engine (a shared database or
    the state file); None without a store."""
    engine = getattr(store, "engine", None)
    if engine is None:
        return None
    # A name of its own: on a host whose daemon has a fixed `[state].instance`, the daemon's
    # name would make its live leases this process's (claims know instances by name).
    name = f"manual {default_instance()} {secrets.token_hex(2)}"
    claims = OneShotClaims(engine, name, lease_of(config), clock=clock, events=events)
    claims.patience = patience_of(config)
    claims.where = str(getattr(store, "where", claims.where))
    return claims


class OneShotClaims(Claiming):
    """Claims for a process that calls no run: logins' leases only, patient. Not an
    instance: no heartbeat (`status` does not list it, a daemon's name is not its), no
    pruning. The command renews its leases (`start`, an unproven call may outlast a lease)
    until it ends (`stop`)."""

    patience = timedelta(0)

    def hold_login(self, login: str) -> str | None:
        """The login's shared lease (None), once no other instance holds it, waiting up to
        `patience`; else why not, naming the holder."""
        got: str | None = None

        def free() -> bool:
            nonlocal got
            got = Claiming.hold_login(self, login)
            return got != Refused.LOGIN_HELD

        def what() -> str:
            return f"{Refused.LOGIN_HELD} ({self._holders(LOGIN_PREFIX + login)})"

        if not self._patiently(free, what):
            return self._gave_up(
                what(),
                "retry once its login is answered (a refused one shows as a credentials wait "
                "in `refreshd status`)",
            )
        return got

    def quiet(self, server: str) -> str | None:
        """None once no live instance's call for `server` is out, waiting up to `patience`:
        a manual refresh is sent after a scheduled one, never beside it. Else why not."""
        why: str | None = None

        def free() -> bool:
            nonlocal why
            try:
                self._ready()
                calling = [name for name, state in self.store.live_on(server) if state == CALLED]
            except Exception as error:  # each driver's own errors: the store is unreachable
                self._failed(error)
                why = str(Refused.UNAVAILABLE)
                return True
            why = f"instance {', '.join(calling)} is calling this server's run" if calling else None
            return why is None

        if not self._patiently(free, lambda: f"{why} ({server})"):
            why = self._gave_up(
                str(why), f"retry once it has answered (`refreshd history {server}` shows it)"
            )
        return why

    def stop(self) -> None:
        """Stop renewing, and give back the logins' leases still held: the command ends
        (done, or Ctrl-C with its call out) and will journal no answer, so a lease left to
        lapse would hold a daemon's or the next command's login back for nothing."""
        Claiming.stop(self)
        with self._lock:
            logins = list(self._logins)
        for login in logins:
            self.free_login(login)

    # --- not an instance ------------------------------------------------------------------

    def live(self) -> list[Instance]:
        return []

    def _beat(self) -> None:
        return

    def _prune(self, now: float) -> None:
        return

    # --- inside ---------------------------------------------------------------------------

    @property
    def _patience_s(self) -> str:
        return f"{self.patience.total_seconds():g}"

    def _patiently(self, free: Callable[[], bool], what: Callable[[], str]) -> bool:
        """Ask `free()` every WAIT_LOOK until it says yes (True) or `patience` has passed
        (False); False at once after `stop`. Said once (`claim.waiting`, `what` waits) if
        it does not say yes at once: the operator sees why the command pauses."""
        end = self._clock.monotonic() + self.patience.total_seconds()
        said = False
        while not free():
            left = end - self._clock.monotonic()
            if not said and left > 0:
                said = True
                self._events.log.info("claim.waiting", waiting_for=what(), up_to_s=round(left, 1))
            if left <= 0 or self._clock.wait(self._stop, min(WAIT_LOOK, left)):
                return False
        return True

    def _gave_up(self, what: str, retry: str) -> str:
        """Why a wait ended without its lease or quiet: the command is stopping (`stop`,
        Ctrl-C: it waited less than its patience, and says so), or its patience ran out."""
        if self._stop.is_set():
            return f"{what}; not waited for: the command is stopping"
        return f"{what}, still after {self._patience_s} s: {retry}"

    def _holders(self, key: str) -> str:
        try:
            names = [name for name, _ in self.store.live_on(key)]
        except Exception:  # only for the message: the refusal stands
            names = []
        return ", ".join(names) or "its holder"

"""This instance's claims on the runs it calls (shared/claims.py), kept alive: the leases
renewed from a thread of their own (never the schedule's), the instance's heartbeat in the
instances table, the shared store's outages (said once, retried with back-off, /healthz 503
after a lease without a renewal), and a login's shared lease while an unproven call for it
is in flight. One path for every engine: on SQLite the tables live in the state file."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from refreshd.clock import Clock
from refreshd.config import Config
from refreshd.config.state import LEASE_DEFAULT, default_instance
from refreshd.core.policy import Action, Decision
from refreshd.core.vicidial import Attempt
from refreshd.events import Events
from refreshd.shared import instances
from refreshd.shared.claims import CALLED, DONE, LOGIN_PREFIX, Claim, ClaimStore
from refreshd.shared.engines import Engine, Tx, sqlite_engine
from refreshd.shared.instances import Instance
from refreshd.tickets import Refused

__all__ = ["Claiming", "claims_for", "instance_name", "lease_of", "schedule_fingerprint"]

# How often old claims and instances are forgotten (older than the history's retention).
PRUNE_EVERY = 3600.0
# A run held by another instance is looked at again at least this often (seconds): its
# holder's death costs the run at most its lease plus this.
LOOK_AGAIN = 1.0
# Back-off while the store is unreachable: from this, doubling, up to a lease.
FIRST_RETRY = 0.5
# A login's lease is a claim on this instant, never a run's due time.
_LOGIN_DUE = datetime(1970, 1, 1, tzinfo=UTC)


def instance_name(config: Config) -> str:
    """How this instance is named in the claims: `[state].instance`, else hostname:pid."""
    return default_instance() if config.state is None else config.state.instance_name


def schedule_fingerprint(config: Config) -> str:
    """A digest of the runs `config` plans: each server's name, windows, `every` and time
    zone, the spread and the blackouts. Instances of one fleet plan the same runs only when
    theirs are equal (claims are keyed by a run's due instant); api_url, credentials and
    the rest may differ from host to host."""
    planned = {
        "spread": config.daemon.spread,
        "servers": sorted(
            (s.name, s.windows, s.every, s.timezone or config.daemon.timezone)
            for s in config.servers
        ),
        "blackouts": [b.model_dump() for b in config.blackouts],
    }
    text = json.dumps(planned, default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def lease_of(config: Config) -> timedelta:
    """How long a claim lives without renewal: `[state].lease`, else its default."""
    return LEASE_DEFAULT if config.state is None else config.state.lease


def claims_for(
    config: Any, store: Any, clock: Clock, events: Events, stop: threading.Event
) -> Claiming:
    """The daemon's claims, renewing until `stop` is set: on the journal's engine once the
    store has one (a shared database), else on the state file (SQLite) beside the journal:
    one path for both."""
    engine = getattr(store, "engine", None) or sqlite_engine(config.daemon.state_path, clock)
    claims = Claiming(engine, instance_name(config), lease_of(config), clock=clock, events=events)
    # A state file has one daemon (instance.py's lock): another instance's claim in it is a
    # dead daemon's, taken over now (as any takeover: said, at-least-once if it was
    # called) rather than a lease after a restart.
    claims.exclusive = engine.kind == "sqlite"
    claims.retention = config.daemon.history_retention
    claims.where = str(getattr(store, "where", None) or f"state file {config.daemon.state_path}")
    claims.schedule = schedule_fingerprint(config)  # again at each reload (Runner.reconfigure)
    claims.start(stop)
    return claims


class Claiming:
    """This instance's claims and heartbeat. Thread-safe: workers take and finish claims,
    the renewal thread renews them; the engine serializes the transactions."""

    def __init__(
        self, engine: Engine, instance: str, lease: timedelta, *, clock: Clock, events: Events
    ) -> None:
        self.engine = engine
        self.instance = instance
        self.lease = lease
        self.store = ClaimStore(engine, instance, lease)
        self._clock = clock
        self._events = events
        self._lock = threading.Lock()
        # Which process this is, beside its name: two live processes under one name are
        # two daemons given one `[state].instance` (instances.beat refuses the second).
        self.host, self.pid = socket.gethostname(), os.getpid()
        # claim key -> (claim, monotonic instant until which it surely holds)
        self._held: dict[tuple[str, str, str, int], tuple[Claim, float]] = {}
        self._logins: dict[str, Claim] = {}
        self._created = False
        self.exclusive = False  # no other instance can be alive on this store
        self.where = "the shared store"  # for messages: the state file, or the URL
        self.retention: timedelta | None = None  # forget claims older (None: keep them)
        self.schedule: str | None = None  # schedule_fingerprint of this instance's config
        self._differing: tuple[str, ...] = ()  # the live instances planning other runs
        # A lost call's run, asked of the cluster's database (verify/watch.py): a settled
        # run's answer when its refresh was taken since the call's start, else None.
        self.lost: Callable[[str, datetime], Attempt | None] | None = None
        self._pruned: float | None = None
        self._outage_since: float | None = None
        self._failures = 0
        self._last_renewal = clock.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- runs ---------------------------------------------------------------------------

    def take(self, server: str, due: datetime) -> Claim | Refused:
        """The claim on a run, or why not. No claim while the store is failing: a claim
        taken now could not be renewed."""
        if self.failing:
            return Refused.UNAVAILABLE
        try:
            self._ready()
            claim = self.store.claim(server, due, self._clock.now())
            found = self.store.state(server, due) if claim is None else None
        except Exception as error:  # each driver's own errors: the store is unreachable
            self._failed(error)
            return Refused.UNAVAILABLE
        if claim is None:
            return Refused.DONE if found is not None and found[0] == "done" else Refused.HELD
        self._hold(claim)
        if claim.taken_over_from is not None and not server.startswith(LOGIN_PREFIX):
            self._events.claim_taken_over(server, due, claim.taken_over_from, claim.maybe_called)
        return claim

    def abandoned(self, server: str, due: datetime) -> None:
        """A run this instance last saw held by another and then moved past (the server's
        next run came before the holder's lease lapsed): said and counted unless its holder
        finished it (`done`), since nobody will take it over. One read, on the worker of the
        server's next call; each instance that moved past the run says it."""
        try:
            found = self.store.state(server, due)
        except Exception as error:
            self._failed(error)
            return
        if found is not None and found[0] != DONE and found[1] != self.instance:
            self._events.claim_abandoned(server, due, found[1], found[0], found[0] == CALLED)

    def settle_lost(self, claim: Claim) -> Attempt | None:
        """A run called before (a lost answer: a takeover from `called`; or a retry, after
        a time-out, say): the settled run's answer when the cluster's database shows a
        refresh taken since that call's start, else None (call again, at-least-once). Read
        off the schedule's lock, on the worker; the renewal thread keeps the claim alive."""
        if claim.called_at is None or self.lost is None:
            return None
        return self.lost(claim.server, claim.called_at)

    def calling(self, claim: Claim) -> bool:
        """Just before the request goes out: may it? Not on a claim this instance could
        not renew in time (it may be another's by now), nor one the store says is lost."""
        with self._lock:
            held = self._held.get(claim.key())
        if held is None or self._clock.monotonic() >= held[1]:
            self._lose(claim, "the lease lapsed before the call (renewals failed)")
            return False
        try:
            if self.store.calling(claim):
                return True
        except Exception as error:
            self._failed(error)
            return False
        self._lose(claim, "the lease lapsed before the call")
        return False

    def holds(self, claim: Claim) -> bool:
        """May the call's result be recorded? True while the fence holds (or the store
        cannot say: the call happened; a takeover will count it at-least-once); False,
        said as `claim.lost`, when another instance took the run over."""
        try:
            kept = self.store.holding(claim)
        except Exception as error:
            self._failed(error)
            return True
        if not kept:
            self._lose(claim, str(Refused.FENCED))
        return kept

    def finish(self, claim: Claim, outcome: str, tx: Tx | None = None) -> bool:
        """The call's result on its claim: `ok` makes the run done for every instance.
        True when the fence held, False (said) when it had moved. `tx`: the journal's
        transaction, once the journal shares the engine."""
        with self._lock:
            self._held.pop(claim.key(), None)
        try:
            kept = self.store.finish(claim, outcome, tx)
        except Exception as error:
            self._failed(error)
            return True
        if not kept:
            self._events.claim_lost(claim.server, claim.due, str(Refused.FENCED))
        return kept

    def finish_in(self, claim: Claim, decision: Decision, tx: Tx) -> bool:
        """The call's result on its claim, inside the journal's transaction `tx`: done, or
        given back until `decision.at`. False (said) when the fence had moved. Errors are
        the journal's to handle (its write is undone with this)."""
        done = decision.action == Action.DONE
        if not self.store.finish(claim, "ok" if done else str(decision.action), tx):
            self._events.claim_lost(claim.server, claim.due, str(Refused.FENCED))
            return False
        if not done:
            self.store.release(claim, decision.at, tx, self._clock.now())
        return True

    def ended(self, claim: Claim) -> None:
        """The claim's end committed (finish_in): no longer held, no longer renewed."""
        with self._lock:
            self._held.pop(claim.key(), None)

    def give_back(self, claim: Claim, until: datetime | None = None) -> None:
        """A run not done here: free for anyone at once, or from `until` on."""
        with self._lock:
            self._held.pop(claim.key(), None)
        try:
            self.store.release(claim, until, local_now=self._clock.now())
        except Exception as error:
            self._failed(error)

    # --- logins -------------------------------------------------------------------------

    def hold_login(self, login: str) -> str | None:
        """The shared lease on a login, for one unproven call (None), or why not (a
        `Refused`: the scheduler looks again later)."""
        got = self.take(LOGIN_PREFIX + login, _LOGIN_DUE)
        if isinstance(got, Refused):
            return Refused.LOGIN_HELD if got in (Refused.HELD, Refused.DONE) else got
        with self._lock:
            self._logins[login] = got
        return None

    def free_login(self, login: str) -> None:
        with self._lock:
            claim = self._logins.pop(login, None)
        if claim is not None:
            self.give_back(claim)

    # --- renewal, health ------------------------------------------------------------------

    @property
    def failing(self) -> bool:
        with self._lock:
            return self._outage_since is not None

    def healthy(self) -> bool:
        """False once renewals have failed (or not run) for longer than a lease."""
        with self._lock:
            last = self._last_renewal
        return self._clock.monotonic() - last <= self.lease.total_seconds()

    def renew(self) -> list[Instance] | None:
        """One renewal: every held claim's lease, this instance's heartbeat; the live
        instances, or None when the store failed."""
        started = self._clock.monotonic()
        with self._lock:
            claims = [claim for claim, _ in self._held.values()]
        try:
            self._ready()
            self._beat()
            kept = {claim.key() for claim in self.store.renew(claims)}
            live = self.live()
            self._prune(started)
        except Exception as error:
            self._failed(error)
            return None
        until = started + self.lease.total_seconds()
        for claim in claims:
            if claim.key() in kept:
                with self._lock:
                    if claim.key() in self._held:
                        self._held[claim.key()] = (claim, until)
            else:
                self._lose(claim, "the lease lapsed: another instance took the run over")
        self._recovered(started)
        self._events.instances(self.instance, [each.name for each in live])
        self._compare(live)
        return live

    def _compare(self, live: list[Instance]) -> None:
        """Say (once per change) which live instances plan other runs than this one. Not
        on a state file: any other instance in it is a dead process (`exclusive`)."""
        if self.exclusive:
            return
        differing = tuple(
            each.name
            for each in live
            if each.name != self.instance
            and None not in (each.schedule, self.schedule)
            and each.schedule != self.schedule
        )
        if differing != self._differing:
            self._differing = differing
            self._events.schedules_compared(self.instance, list(differing))

    def delay(self) -> float:
        """Seconds until the next renewal: a third of a lease, or the back-off."""
        with self._lock:
            failures = self._failures
        third = self.lease.total_seconds() / 3
        if not failures:
            return third
        return min(self.lease.total_seconds(), FIRST_RETRY * 2.0 ** min(failures - 1, 30))

    def look_again(self) -> timedelta:
        """When a run held elsewhere (or not claimable now) is worth claiming again: within
        LOOK_AGAIN, so a dead holder's run is taken over at most that long after its lease
        ran out; while the store fails, the renewals' back-off."""
        if self.failing:
            return timedelta(seconds=self.delay())
        return timedelta(seconds=min(self.delay(), LOOK_AGAIN))

    def live(self) -> list[Instance]:
        """The live instances and the runs each holds (for `status`)."""
        return instances.live(self.engine, self._lease_ms)

    def start(self, stop: threading.Event | None = None) -> None:
        """Renew from a thread of its own, until `stop` (or `stop()`)."""
        self._stop = stop or self._stop
        self._thread = threading.Thread(target=self._renewing, name="claims", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _renewing(self) -> None:
        self.renew()
        while not self._clock.wait(self._stop, self.delay()):
            self.renew()

    # --- inside ---------------------------------------------------------------------------

    @property
    def _lease_ms(self) -> int:
        return int(self.lease.total_seconds() * 1000)

    def _ready(self) -> None:
        if not self._created:
            self.store.create()
            instances.create(self.engine)
            if self.exclusive:
                instances.expire_others(self.engine, self.instance)
            self._beat()  # before the first claim: a twin under this name claims nothing
            self._created = True

    def _beat(self) -> None:
        # A state file's lock proves any other process under this name dead (exclusive).
        lease_ms = None if self.exclusive else self._lease_ms
        instances.beat(self.engine, self.instance, self.host, self.pid, lease_ms, self.schedule)

    def _prune(self, now: float) -> None:
        """Hourly: the claims of runs older than the history's retention, and the rows of
        instances silent that long (each restart is a new hostname:pid)."""
        if self.retention is None or (
            self._pruned is not None and now - self._pruned < PRUNE_EVERY
        ):
            return
        self._pruned = now
        self.store.prune(self._clock.now() - self.retention)
        instances.prune(self.engine, int(self.retention.total_seconds() * 1000))

    def _hold(self, claim: Claim) -> None:
        with self._lock:
            self._held[claim.key()] = (claim, self._clock.monotonic() + self.lease.total_seconds())

    def _lose(self, claim: Claim, reason: str) -> None:
        with self._lock:
            was_held = self._held.pop(claim.key(), None) is not None
        if was_held and not claim.server.startswith(LOGIN_PREFIX):
            self._events.claim_lost(claim.server, claim.due, reason)

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            self._failures += 1
            if self._outage_since is None:
                self._outage_since = self._clock.monotonic()
        self._events.store_failed(  # said once per outage (events.py)
            f"claims in {self.where}: {type(error).__name__}: {error}. Check that it "
            "is reachable and writable; retrying with back-off, no call starts meanwhile",
            store="claims",
        )

    def _recovered(self, at: float) -> None:
        with self._lock:
            self._outage_since = None
            self._failures = 0
            self._last_renewal = at
        self._events.store_answered(store="claims")

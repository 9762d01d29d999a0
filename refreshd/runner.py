"""The one path every call takes: the login gate, then settle -> ledger -> journal -> events.

The daemon (through the scheduler), `refreshd refresh` and `refreshd check --online` each
hold a `Runner`: it owns the process's only live state, the ledger, loaded from the store
and journaled back after every change. Two questions have exactly one answer here:

- may this login be tried now? (`try_start`, asking `policy.credentials_attempt_allowed`
  with the ledger's entry), and
- what does this finished call change? (`settle`: the core decides and applies, the store
  journals in one transaction, `Events` logs and counts).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import partial
from typing import Any

from refreshd.attempt import credentials_fingerprint
from refreshd.binding import backoff_of, logins_of, server_fingerprint
from refreshd.claiming import Claiming, schedule_fingerprint
from refreshd.clock import Clock
from refreshd.config import Config, ServerConfig
from refreshd.core.ledger import (
    Call,
    Event,
    Ledger,
    LoginEntry,
    Logins,
    ServerEntry,
    login_key,
)
from refreshd.core.merge import Merged, merge, reconfigure
from refreshd.core.policy import Decision, WaitKind
from refreshd.core.settle import learn, settle
from refreshd.core.verification import Applied, Verdict
from refreshd.core.vicidial import Attempt, Outcome
from refreshd.events import Events
from refreshd.gate import LoginGate
from refreshd.logs import utc_text
from refreshd.metrics import Metrics
from refreshd.oneshot import one_shot_claims
from refreshd.shared.engines import Tx
from refreshd.store import NewCall, StateError, StateStore, Verification
from refreshd.tickets import FENCED_OUT, Fenced, Refused, Ticket

__all__ = ["Runner", "runner_for"]


class Runner(LoginGate):
    """The ledger of one process, the login gate on it, and the path after each call.

    Thread-safe: the scheduler's workers settle calls concurrently; every change of the
    ledger happens under one lock, journaled before the lock is released, so the journal
    holds changes in the order they were made.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: StateStore | None,
        clock: Clock,
        log: Any,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.log = log
        self.events = Events(log, metrics, clock)
        self.backoff = backoff_of(config.backoff)
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        self._ledger = Ledger() if store is None else store.load()
        self._logins = Logins()
        self._table_fps: dict[str, str] = {}  # credentials table -> its password's fingerprint
        self._server_logins: dict[str, str] = {}
        self._set_aside: dict[str, datetime] = {}  # login -> the wait --force set aside
        # The daemon's verified refreshes (verify/watch.py) hear of every call settled.
        self.after_call: Callable[[Call, Attempt], None] | None = None
        # The daemon's claims (claiming.py): a run called on a claim, a login under a lease.
        self.claims: Claiming | None = None
        self._leased: set[str] = set()  # logins whose shared lease this process holds

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    # --- configuration -----------------------------------------------------------------

    def configure(
        self, config: Config, servers: Iterable[ServerConfig], *, changed_logins: Iterable[str]
    ) -> None:
        """Take a (new) config: `servers` are those added or changed (their suspension ends
        if their config changed), `changed_logins` the credentials tables that changed."""
        resolved = config.resolved_credentials()
        table_fps = {name: credentials_fingerprint(creds) for name, creds in resolved.items()}
        logins = logins_of(config, table_fps)
        if self.claims is not None:  # a reload changes the runs this instance plans
            self.claims.schedule = schedule_fingerprint(config)
        with self._lock:
            self.config = config
            self.backoff = backoff_of(config.backoff)
            self._logins = logins
            self._table_fps = table_fps
            self._server_logins = {s.name: self.login_of(s) for s in config.servers}
            done = reconfigure(
                self._ledger,
                server_fingerprints={
                    s.name: server_fingerprint(config, s, table_fps[s.credentials]) for s in servers
                },
                logins=logins,
                changed_logins=frozenset(logins.of_table[t] for t in changed_logins),
                now=self.clock.now(),
            )
            self._ledger = done.ledger
            self._journal(done.servers, done.logins)
        self.events.configure(config)
        self.events.emit(done.events)

    def login_of(self, server: ServerConfig) -> str:
        """The login (ledger key) a server's calls use: its VICIdial user."""
        return self._logins.of_table.get(server.credentials) or login_key(
            self.config.credentials[server.credentials].user
        )

    def login_name(self, login: str) -> str:
        """How messages and metrics name a login: its credentials tables."""
        return self._logins.name(login)

    def login_fingerprint(self, table: str) -> str | None:
        return self._table_fps.get(table)

    # --- the login gate (its first half: gate.LoginGate) ------------------------------

    def confirm(self, login: str, password: str) -> str | None:
        """`try_start`'s other half, just before the call (outside any lock): an unproven
        login is tried by one instance at a time, under its shared lease, after taking in
        what the others journaled. None: go; else why not (the call is skipped)."""
        claims = self.claims
        if claims is None or password in self._ledger.login(login).proven:
            return None
        refused = claims.hold_login(login)
        if refused is not None:
            return str(refused)
        try:
            self.sync()
        except StateError:  # said by the heartbeat's own sync; the job comes back later
            claims.free_login(login)
            return str(Refused.UNAVAILABLE)
        wait = self.wait_of(login, self.clock.now())
        if wait is not None:
            claims.free_login(login)
            return wait.reason
        with self._lock:
            self._leased.add(login)
        return None

    def admit(self, login: str, password: str) -> str | None:
        """The whole gate for a login tried outside the dispatcher (a `check --online`
        probe): counted in flight, then confirmed. None: go, then `finished`; else why not."""
        if not self.try_start(login, password, self.clock.now()):
            return "another call is logging in with these credentials"
        refused = self.confirm(login, password)
        if refused is not None:
            self.finished(login)
        return refused

    def waits_before(self, servers: Iterable[ServerConfig]) -> list[str]:
        """Why these servers' logins may not be tried now: one line per waiting login,
        saying until when, why, and whether --force lifts it (for a one-shot command to
        refuse with)."""
        now = self.clock.now()
        lines: dict[str, str] = {}
        for server in servers:
            login = self.login_of(server)
            wait = self.wait_of(login, now)
            if wait is not None and login not in lines:
                when = utc_text(wait.until, "seconds")
                force = (
                    "--force does not lift it"
                    if wait.kind is WaitKind.FAILED_LOGIN_BUDGET
                    else "--force logs in anyway"
                )
                lines[login] = (
                    f"credentials {self.login_name(login)!r} wait until {when}: "
                    f"{wait.reason} ({force})"
                )
        return list(lines.values())

    # --- after a call ------------------------------------------------------------------

    def call_for(self, server: ServerConfig, **where: Any) -> Call:
        """A call's place for `server`; `where`: attempt, slot, due, retry_until."""
        return Call(
            server=server.name,
            login=self.login_of(server),
            credentials=self._logins.name(self.login_of(server)),
            login_fingerprint=self._table_fps.get(server.credentials),
            **where,
        )

    def settle(self, call: Call, attempt: Attempt, ticket: Ticket | None = None) -> Decision:
        """Decide, update the ledger, journal it (durable before the next plan), then log
        and count: in that order (SPEC.md). With a claim (`ticket`), only while its fence
        holds: a refused result is not the run's (the ticket says so)."""
        if ticket is not None and not ticket.holds(attempt.answer.outcome):
            # Another instance took the run over while this call was out: nothing of the
            # run is recorded; what the answer says of the login still is (it happened).
            self.learn(call, attempt.answer.outcome)
            self.events.called(call.server, attempt)
            return FENCED_OUT
        self._catch_up()
        with self._lock:
            done = settle(
                self._ledger,
                call,
                attempt,
                backoff=self.backoff,
                rng=self._rng,
                now=self.clock.now(),
            )
            # In memory first: a failing disk must not make this process forget a
            # success, a suspension or a wait.
            previous, self._ledger = self._ledger, done.ledger
            answer = attempt.answer
            record = _history_row(call, attempt)
            due = (call.server, call.due) if done.run_done and call.due is not None else None
            within = None if ticket is None else partial(ticket.commit, decision=done.decision)
            try:
                journaled = self._journal(
                    done.servers, done.logins, record, due, outcome=answer.outcome, within=within
                )
            except Fenced:
                # Taken over since the early look: the write is undone, and so is the
                # ledger's change (what the answer says of the login is still learnt).
                self._ledger = previous
                fenced = True
            else:
                fenced = False
                if ticket is not None:
                    ticket.committed = journaled
        if fenced:
            self.learn(call, attempt.answer.outcome)
            self.events.called(call.server, attempt)
            return FENCED_OUT
        self.events.emit(done.events)
        first = call.due if call.attempt == 1 and not call.manual else None
        self.events.called(call.server, attempt, due=first)
        if ticket is not None:
            ticket.settled(done.decision)
        if self.after_call is not None:
            self.after_call(call, attempt)
        return done.decision

    def verified(self, server: str, started: datetime, verdict: Verdict) -> None:
        """The verdict on `server`'s `ok` call sent at `started`: kept with the call in the
        history (for `status` and `history`), then logged and counted."""
        applied = isinstance(verdict, Applied)
        detail = None
        if not isinstance(verdict, Applied):
            boxes = ", ".join(f"{sid} ({ip})" for ip, sid in verdict.flagged)
            detail = verdict.unread or f"still flagged: {boxes}"
        if self.store is not None:
            try:
                found = Verification(applied, verdict.seconds, detail)
                self.store.verified(server, started, found)
            except StateError as err:
                self.events.store_failed(str(err), server=server)
        self.events.verified(server, started, verdict)

    def learn(self, call: Call, outcome: Outcome) -> None:
        """Take in what a login probe's answer says of its login (never of a server)."""
        self._catch_up()
        with self._lock:
            self._ledger, logins, events = learn(
                self._ledger,
                call,
                outcome,
                backoff=self.backoff,
                rng=self._rng,
                now=self.clock.now(),
            )
            self._journal({}, logins)
        self.events.emit(events)

    def tell(self, events: Iterable[Event]) -> None:
        """Log and count events that change no entry (a skipped call, a missed slot)."""
        self.events.emit(events)

    def _journal(
        self,
        servers: Mapping[str, ServerEntry],
        logins: Mapping[str, LoginEntry],
        call: NewCall | None = None,
        done: tuple[str, datetime] | None = None,
        *,
        outcome: Outcome | None = None,
        within: Callable[[Tx], object] | None = None,
    ) -> bool:
        """Write a change (with `within`, a claim's end, in the same transaction); whether
        it was written. Fenced (from `within`) goes to the caller."""
        if self.store is None or not (servers or logins or call):
            return False
        try:
            self.store.journal(servers=servers, logins=logins, call=call, done=done, within=within)
        except StateError as err:
            self.events.store_failed(str(err))
            if call is not None:
                # The call happened; only its record failed. Said for each call: after a
                # restart this run could be refreshed again.
                self.log.error(
                    "refresh.unrecorded", server=call.server, outcome=str(outcome), error=str(err)
                )
            return False
        self.events.store_answered()
        return True

    # --- the state file under us --------------------------------------------------------

    def check_store(self) -> None:
        """If the state file was deleted or replaced under this process, say so and write
        the ledger out again to a file at its path: our journal went to the old inode,
        where a restart would not find it, and would then refresh done slots again.
        Raises StateError when the new file cannot be written."""
        store = self.store
        if store is None or store.readonly:
            return
        what = store.replaced()
        if what is None:
            return
        self.log.error(
            "state.error",
            error=f"{store.where} was {what} while refreshd ran",
            fix="writing the ledger out again to a new file at that path",
        )
        fresh = store.reopened()
        with self._lock:
            fresh.restore(self._ledger, self.clock.now())
            self.store = fresh
        store.close()
        self.log.info("state.restored", path=str(store.path), servers=len(self._ledger.servers))

    # --- other processes ---------------------------------------------------------------

    def _catch_up(self) -> None:
        """Before deciding on an answer: what other processes journaled since the last look
        (one read when nothing changed). The journal writes whole entries, so a decision
        made on a stale ledger would write back another instance's suspension or
        credentials wait as if it had never been (its heartbeat's sync is 10 s away)."""
        try:
            self.sync()
        except StateError as err:  # the write that follows will say it too, once
            self.events.store_failed(str(err))

    def store_beat(self) -> None:
        """The daemon's heartbeat in the store, for `refreshd status` ("last heartbeat").
        Raises StateError."""
        if self.store is not None:
            self.store.beat(self.clock.now())

    def sync(self) -> Merged | None:
        """Take in what another process journaled since the last look; None if nothing.
        Raises StateError when the store cannot be read."""
        if self.store is None or not self.store.changed_by_others():
            return None
        stored = self.store.load()
        with self._lock:
            merged = merge(
                self._ledger,
                stored,
                server_logins=self._server_logins,
                logins=self._logins,
                now=self.clock.now(),
            )
            self._ledger = merged.ledger
        self.events.emit(merged.events)
        return merged


def _history_row(call: Call, attempt: Attempt) -> NewCall:
    answer = attempt.answer
    return NewCall(
        server=call.server,
        slot_start=call.slot.start if call.slot else None,
        due=call.due,
        attempt=call.attempt,
        outcome=answer.outcome,
        at=attempt.started_at,
        duration_ms=attempt.duration_ms,
        http_status=answer.http_status,
        servers_flagged=answer.servers_flagged,
        detail=answer.detail,
    )


def runner_for(config: Config, *, store: StateStore | None, clock: Clock, log: Any) -> Runner:
    """The runner of a one-shot command: the ledger as journaled, the config applied, and
    the login leases in its store (`oneshot.py`: the command renews them,
    `claims.start()`, until it ends, `claims.stop()`).
    Raises StateError when the store cannot be read."""
    runner = Runner(config, store=store, clock=clock, log=log)
    runner.claims = one_shot_claims(config, store, clock, runner.events)
    runner.configure(config, [], changed_logins=[])
    return runner

"""APScheduler wiring: every server's next start in one queue, one dated job for the earliest."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from refreshd.attempt import Attempt, Target, credentials_fingerprint, target_of
from refreshd.binding import backoff_of, schedule_of
from refreshd.client import Client, client_for
from refreshd.config import Config, ServerConfig
from refreshd.core.planning import Next, earliest_start, next_fire, retry_until
from refreshd.core.policy import Action, Decision
from refreshd.core.slots import Run, Schedule, open_until
from refreshd.core.vicidial import Outcome
from refreshd.core.windows import AbsoluteWindow, WeeklyWindow
from refreshd.dispatch import CredentialsGate, Dispatcher, Job
from refreshd.metrics import Metrics
from refreshd.recorder import CallContext, Recorder
from refreshd.state import CredentialsWait, ServerState, StateStore

__all__ = ["Scheduler", "server_fingerprint"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def server_fingerprint(config: Config, server: ServerConfig, credentials_fp: str) -> str:
    """Changes whenever anything about how or when the server is refreshed changes, its
    login included; a suspension recorded under another fingerprint ends (SPEC: a change
    of the server's or the credentials' config ends it)."""
    parts = (
        server.model_dump_json(),
        _blackouts_text(config.blackouts_for(server.name)),
        str(config.daemon.spread),
        config.client.source,
        credentials_fp,
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=256)
def _blackouts_text(blackouts: tuple[WeeklyWindow | AbsoluteWindow, ...]) -> str:
    # A fleet shares a few blackout lists; their repr (datetimes) was half a fingerprint.
    return repr(blackouts)


# (schedule, not before, last done) -> next_fire's answer, for one planning pass only: keyed
# by instants, a longer-lived cache would miss in the steady state and only grow.
_PlanMemo = dict[tuple[Schedule, datetime, datetime | None], Next | None]


@dataclass
class _Server:
    """One server's place in the schedule (mutable; guarded by the scheduler's lock)."""

    config: ServerConfig
    schedule: Schedule
    target: Target
    credentials_fp: str
    run_next: Next | None = None
    attempts: int = 0  # calls made for run_next.run so far
    generation: int = 0  # bumped whenever it is (re)queued: an older entry or answer is stale
    in_flight: bool = False
    # Mirrors of what the state store holds, kept in memory so that a store that fails to
    # write (a full disk) cannot make the daemon forget a success or a suspension and call
    # again at once: the store makes them survive a restart, these make them hold now.
    last_done: datetime | None = None  # due of the latest successful run
    suspended_until: datetime | None = None
    last_outcome: str | None = None
    # The latest success known here (ours, or the store's at start): a later one in the
    # store was made by another process, i.e. a manual `refreshd refresh`.
    known_success: datetime | None = None


class Scheduler:
    """Plans every server's runs and fires them through the dispatcher.

    Every server's next start is an absolute instant computed by our window arithmetic and
    kept in one heap; APScheduler (the timing engine) holds a single dated job for the
    earliest of them, so 10,000 servers cost one timer, not 10,000 jobs. When it fires,
    each due server is re-checked (window, blackout, suspension, credentials wait, done)
    and handed to the dispatcher. The outcome is recorded, durably, before the server's
    next run is planned.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: StateStore,
        log: Any,
        metrics: Metrics | None = None,
        client: Client | None = None,
        now: Callable[[], datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.log = log
        self.metrics = metrics
        self._now = now
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._client = client or client_for(config)
        self._retired_clients: list[Client] = []
        self.gate = CredentialsGate()
        self.recorder = Recorder(
            store=store,
            gate=self.gate,
            backoff=backoff_of(config.backoff),
            log=log,
            metrics=metrics,
            rng=rng,
            now=now,
        )
        self.dispatcher = Dispatcher(
            self._client, max_concurrency=config.daemon.max_concurrency, gate=self.gate, now=now
        )
        self._aps = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(2)},
            job_defaults={
                # Never drop a wake-up because the process woke late: the re-check at fire
                # time decides whether a run may still start (window, blackout, suspension).
                "misfire_grace_time": None,
                "coalesce": True,
            },
        )
        self._servers: dict[str, _Server] = {}
        self._queue: list[tuple[datetime, int, str, int]] = []  # (at, seq, server, generation)
        self._seq = itertools.count()
        self._armed: tuple[datetime, str] | None = None  # the wake job in APScheduler
        self._stopping = False
        self._credentials_fps: dict[str, str] = {}
        self._last_loop_beat = monotonic()
        if metrics is not None:
            metrics.in_flight.set_function(lambda: self.dispatcher.in_flight)

    # --- life -------------------------------------------------------------------------

    def start(self) -> None:
        """Load waits from the state store, plan every server, start the timing engine."""
        self._apply_config(self.config, initial=True)
        self._aps.start()

    def stop(self, grace: float) -> bool:
        """No new calls; calls in flight get `grace` seconds. True if all finished."""
        with self._lock:
            self._stopping = True
        # APScheduler marks itself stopped without its job-store lock, so a pass already
        # running would fail to remove its finished job and die with a traceback. Paused,
        # no new pass starts; removing the jobs waits out the one running (it holds that
        # lock); then nothing is left for a pass to remove.
        if self._aps.running:
            self._aps.pause()
            self._aps.remove_all_jobs()
            self._aps.shutdown(wait=False)
        finished = self.dispatcher.stop(grace)
        for client in (self._client, *self._retired_clients):
            client.close()
        return finished

    def reload(self, config: Config) -> dict[str, list[str]]:
        """Switch to a new, already validated config; unchanged servers keep their plans."""
        return self._apply_config(config, initial=False)

    # --- health ------------------------------------------------------------------------

    def loop_beat(self) -> None:
        """Ask the timing engine to run a tiny job now; it proves the loop is alive."""
        if not self._stopping:
            self._aps.add_job(self._beat, id="beat", replace_existing=True)

    def _beat(self) -> None:
        self._last_loop_beat = self._monotonic()

    def loop_alive(self, within: float) -> bool:
        return self._monotonic() - self._last_loop_beat <= within

    def replan_all(self) -> None:
        """Re-plan every server not in flight (after a wall-clock jump, say)."""
        with self._lock:
            now = self._now()
            memo: _PlanMemo = {}
            for server in self._servers.values():
                if not server.in_flight:
                    self._plan(server, now, memo)
            # The timing engine computed its sleep from the old wall clock: after a forward
            # step it would oversleep, so give it a fresh wake-up to compute from.
            self._arm(force=True)

    def sync_from_store(self) -> None:
        """Take in what another process wrote to the state file since the last look.

        SPEC: a manual `refreshd refresh` ends a suspension or a credentials wait when it
        succeeds, and may start one when it fails; the running daemon keeps both in memory
        (so a failing disk cannot make it forget them), so it has to be told. Only the
        store's evidence moves it: a success newer than any known here ends the server's
        suspension and its login's wait; a suspension or a wait (for the credentials as
        configured now) lasting longer than the one known here is adopted.
        """
        if self._stopping or not self.store.changed_by_others():
            return
        states = self.store.all_server_states()
        waits = self.store.all_credentials_waits()
        with self._lock:
            now = self._now()
            touched: dict[str, _Server] = {}
            logins_worked: set[str] = set()
            for name, server in self._servers.items():
                state = states.get(name)
                if state is None:
                    continue
                success = state.last_success_at
                if success is not None and (
                    server.known_success is None or success > server.known_success
                ):
                    server.known_success = success
                    logins_worked.add(server.config.credentials)
                    if server.suspended_until is not None and server.suspended_until > now:
                        server.suspended_until = None
                        touched[name] = server
                        self.log.info(
                            "server.resumed", server=name, reason="a manual refresh succeeded"
                        )
                elif state.suspended_until is not None and state.suspended_until > max(
                    now, server.suspended_until or now
                ):
                    server.suspended_until = state.suspended_until
                    touched[name] = server
                    self.log.warning(
                        "server.suspended",
                        server=name,
                        outcome=str(state.last_outcome) if state.last_outcome else None,
                        suspended_until=state.suspended_until,
                        suspensions=state.suspensions,
                        reason=f"{state.suspension_reason} (by a manual refresh)",
                    )
            for credentials, fingerprint in self._credentials_fps.items():
                waiting = self.gate.waiting(credentials, now)
                wait = waits.get(credentials)
                if credentials in logins_worked and waiting is not None:
                    self.gate.clear_wait(credentials)
                    self.log.info(
                        "credentials.resumed",
                        credentials=credentials,
                        reason="a manual refresh logged in",
                    )
                elif (
                    wait is not None
                    and wait.until > max(now, waiting or now)
                    and _for_login(wait, fingerprint)
                ):
                    self.gate.wait(credentials, wait.until)
                    self.log.warning(
                        "credentials.suspended",
                        credentials=credentials,
                        suspended_until=wait.until,
                        reason=f"{wait.reason} (by a manual refresh)",
                    )
                else:
                    continue
                touched.update(
                    (name, server)
                    for name, server in self._servers.items()
                    if server.config.credentials == credentials
                )
            for server in touched.values():
                if not server.in_flight:
                    self._plan(server, now)

    # --- configuration -----------------------------------------------------------------

    def _apply_config(self, config: Config, *, initial: bool) -> dict[str, list[str]]:
        changes: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "kept": []}
        old_credentials = self.config.resolved_credentials()
        new_credentials = config.resolved_credentials()
        credentials_fps = {n: credentials_fingerprint(c) for n, c in new_credentials.items()}
        with self._lock:
            self._credentials_fps = credentials_fps
            if not initial:
                self.recorder.backoff = backoff_of(config.backoff)
                if config.client != self.config.client:
                    # Calls in flight finish on the old client; it is closed at stop.
                    self._retired_clients.append(self._client)
                    self._client = client_for(config)
                    self.dispatcher.use_client(self._client)
            for name, creds in new_credentials.items():
                changed = initial or old_credentials.get(name) != creds
                self._sync_credentials_wait(name, credentials_fps[name], changed=changed)
            self.config = config
            wanted = {server.name: server for server in config.servers}
            for name in list(self._servers):
                if name not in wanted:
                    self._drop(name)
                    changes["removed"].append(name)
            states = self.store.all_server_states()
            last_done = self.store.last_runs_done() if initial else {}
            fingerprints: dict[str, str] = {}
            to_plan: list[_Server] = []
            for name, server_config in wanted.items():
                current = self._servers.get(name)
                schedule = schedule_of(config, server_config)
                target = target_of(
                    config, server_config, new_credentials[server_config.credentials]
                )
                if (
                    current is not None
                    and current.config == server_config
                    and current.target == target
                    and current.schedule == schedule
                ):
                    changes["kept"].append(name)
                    continue
                creds_fp = credentials_fps[server_config.credentials]
                fp = server_fingerprint(config, server_config, creds_fp)
                state = states.get(name)
                if state is None or state.config_fingerprint != fp:
                    fingerprints[name] = fp
                resumed = (
                    state is not None
                    and state.config_fingerprint not in (None, fp)
                    and state.suspended_until is not None
                    and state.suspended_until > self._now()
                )
                if resumed:
                    # Config changed since the suspension began (here or before a restart).
                    self.store.resume_server(name, forget_suspensions=True)
                    self.log.info("server.resumed", server=name, reason="config changed")
                fresh = _Server(server_config, schedule, target, creds_fp)
                if current is not None:
                    fresh.generation = current.generation + 1
                    fresh.in_flight = current.in_flight
                    fresh.last_done = current.last_done
                    fresh.last_outcome = current.last_outcome
                    fresh.known_success = current.known_success
                    changes["changed"].append(name)
                    fresh.suspended_until = None if resumed else current.suspended_until
                else:
                    fresh.last_done = last_done.get(name)
                    if state is not None:
                        fresh.suspended_until = None if resumed else state.suspended_until
                        fresh.last_outcome = str(state.last_outcome) if state.last_outcome else None
                        fresh.known_success = state.last_success_at
                    changes["added"].append(name)
                self._servers[name] = fresh
                if not fresh.in_flight:
                    to_plan.append(fresh)
            self.store.set_server_fingerprints(fingerprints)
            now = self._now()
            memo: _PlanMemo = {}
            for server in to_plan:
                self._plan(server, now, memo)
                if initial:
                    self._show_state(states.get(server.config.name), now)
        if self.metrics is not None:
            self.metrics.forget_servers(self._servers)
        return changes

    def _show_state(self, state: ServerState | None, now: datetime) -> None:
        """Metrics carried over a restart: a suspension or a last success is news to the
        scrape even though no call has been made yet."""
        if self.metrics is None or state is None:
            return
        suspended = state.suspended_until is not None and state.suspended_until > now
        self.metrics.suspended.labels(state.name).set(1 if suspended else 0)
        if state.last_success_at is not None:
            self.metrics.last_success.labels(state.name).set(state.last_success_at.timestamp())

    def _sync_credentials_wait(self, name: str, fingerprint: str, *, changed: bool) -> None:
        wait = self.store.credentials_wait(name)
        if changed:
            self.gate.clear(name)
        if wait is None or wait.until <= self._now():
            return
        if not _for_login(wait, fingerprint):
            self.store.clear_credentials_wait(name)
            self.log.info("credentials.resumed", credentials=name, reason="credentials changed")
            return
        self.gate.wait(name, wait.until)

    def _drop(self, name: str) -> None:
        server = self._servers.pop(name)
        server.generation += 1  # its queue entry, and any answer in flight, are now stale

    # --- planning ----------------------------------------------------------------------

    def _not_before(self, server: _Server, now: datetime) -> datetime:
        """Now, or later while the server is suspended or its credentials wait."""
        waiting = self.gate.waiting(server.config.credentials, now)
        return earliest_start(now, server.suspended_until, waiting)

    def _plan(self, server: _Server, now: datetime, memo: _PlanMemo | None = None) -> None:
        """Choose the server's next run and queue it. `memo`: shared by one planning pass
        over many servers, where servers with equal schedules get the same answer."""
        if self._stopping:
            return
        name = server.config.name
        previous = server.run_next.run if server.run_next else None
        key = (server.schedule, self._not_before(server, now), server.last_done)
        if memo is None or key not in memo:
            chosen = next_fire(*key)
            if memo is not None:
                memo[key] = chosen
        else:
            chosen = memo[key]
        server.run_next = chosen
        if chosen is None or chosen.run != previous:
            if previous is not None and server.attempts:
                self._note_if_missed(server, previous, chosen)
            server.attempts = 0
        if chosen is None:
            server.generation += 1
            self.log.warning("server.unplanned", server=name, reason="no window ahead")
            return
        self._queue_at(server, chosen.at)

    def _note_if_missed(self, server: _Server, previous: Run, chosen: Next | None) -> None:
        """`slot.missed` when a run that was tried is given up and its slot had no success:
        no retry fitted, or a suspension or credentials wait outlasted the slot."""
        if chosen is not None and chosen.run.slot == previous.slot:
            return  # the slot goes on (a later repeat, or the same slot after a wait)
        slot = previous.slot
        if server.last_done is not None and slot.start <= server.last_done < slot.end:
            return
        name = server.config.name
        self.log.error(
            "slot.missed",
            server=name,
            slot=slot.start,
            slot_end=slot.end,
            outcome=server.last_outcome,
            attempts=server.attempts,
        )
        if self.metrics is not None:
            self.metrics.slots_missed.labels(name).inc()

    def _retry(self, server: _Server, at: datetime) -> None:
        if server.run_next is None or self._stopping:
            return
        server.run_next = Next(server.run_next.run, at)
        self._queue_at(server, at)

    def _queue_at(self, server: _Server, at: datetime) -> None:
        server.generation += 1
        heapq.heappush(self._queue, (at, next(self._seq), server.config.name, server.generation))
        if self.metrics is not None:
            self.metrics.next_slot.labels(server.config.name).set(at.timestamp())
        self._arm()

    def _arm(self, *, force: bool = False) -> None:
        """Make sure the timing engine wakes us at the queue's earliest instant."""
        while self._queue and self._stale(self._queue[0]):
            heapq.heappop(self._queue)
        if not self._queue or self._stopping:
            return
        earliest = self._queue[0][0]
        if not force and self._armed is not None and self._armed[0] <= earliest:
            return  # already waking at or before it
        if self._armed is not None:
            # It may be firing right now; an extra wake-up finds nothing and re-arms.
            with contextlib.suppress(JobLookupError):
                self._aps.remove_job(self._armed[1])
        job_id = f"wake#{next(self._seq)}"
        self._armed = (earliest, job_id)
        self._aps.add_job(self._wake, trigger="date", run_date=earliest, id=job_id)

    def _stale(self, entry: tuple[datetime, int, str, int]) -> bool:
        server = self._servers.get(entry[2])
        return server is None or server.generation != entry[3]

    # --- firing ------------------------------------------------------------------------

    def _wake(self) -> None:
        """The earliest queued instant has come: fire every server now due."""
        with self._lock:
            self._armed = None
            if self._stopping:
                return
            now = self._now()
            # Servers whose refreshes would be the identical request, grouped before any is
            # fired: each group goes to the dispatcher in one step, so its first request
            # cannot be answered before its twins ride along (they would be sent again),
            # and a group's call leaves without waiting for the rest of a large burst.
            groups: dict[Hashable, list[_Server]] = {}
            while self._queue and self._queue[0][0] <= now:
                entry = heapq.heappop(self._queue)
                if not self._stale(entry):
                    server = self._servers[entry[2]]
                    groups.setdefault(server.target.key, []).append(server)
            for group in groups.values():
                jobs = [job for server in group if (job := self._fire(server, now)) is not None]
                if jobs and not self.dispatcher.submit_all(jobs):
                    for job in jobs:
                        self._servers[job.server].in_flight = False
            self._arm()

    def _fire(self, server: _Server, now: datetime) -> Job | None:
        """Re-check a due server and make its call, or re-plan it; under the lock."""
        name = server.config.name
        planned = server.run_next
        assert planned is not None
        run = planned.run
        # The wall clock may have moved, a suspension begun or a wait started since this was
        # planned: never start outside a window, in a blackout, or a run already done.
        if (
            open_until(server.schedule, now) is None
            or self._not_before(server, now) > now
            or (server.last_done is not None and run.due <= server.last_done)
        ):
            self._plan(server, now)
            return None
        server.attempts += 1
        server.in_flight = True
        generation = server.generation
        ctx = CallContext(
            server=name,
            credentials=server.config.credentials,
            attempt=server.attempts,
            slot=run.slot,
            due=run.due,
            retry_until=retry_until(server.schedule, run, now),
            credentials_fingerprint=server.credentials_fp,
        )
        return Job(
            name,
            server.config.credentials,
            server.target,
            on_done=lambda attempt: self._done(name, generation, ctx, attempt),
            on_skipped=lambda reason: self._skipped(name),
        )

    def _done(self, name: str, generation: int, ctx: CallContext, attempt: Attempt) -> None:
        decision = self.recorder.record(ctx, attempt)  # durable before the next plan
        with self._lock:
            server = self._servers.get(name)
            if server is None:
                return
            server.in_flight = False
            server.last_outcome = str(attempt.answer.outcome)
            if attempt.answer.outcome is Outcome.OK:
                server.known_success = _later(server.known_success, attempt.started_at)
            if decision.action is Action.DONE:
                # Even when re-configured mid-call: this run did succeed.
                server.last_done = _later(server.last_done, ctx.due)
                server.suspended_until = None
            if server.generation != generation:
                # Re-configured while the call was in flight: plan from the new config.
                self._plan(server, self._now())
                return
            self._follow(server, decision, ctx)

    def _follow(self, server: _Server, decision: Decision, ctx: CallContext) -> None:
        now = self._now()
        if decision.action is Action.SUSPEND_SERVER:
            server.suspended_until = decision.at
        if decision.action is Action.RETRY and decision.at is not None:
            self._retry(server, decision.at)
        elif decision.action is Action.GIVE_UP:
            self._plan(server, max(now, ctx.retry_until or now))
        elif decision.action is Action.WAIT_CREDENTIALS:
            for other in self._servers.values():
                if other.config.credentials == server.config.credentials and not other.in_flight:
                    self._plan(other, now)
        else:  # DONE, SUSPEND_SERVER: the store already says what comes next
            self._plan(server, now)

    def _skipped(self, name: str) -> None:
        with self._lock:
            server = self._servers.get(name)
            if server is None:
                return
            server.in_flight = False
            if not self._stopping:
                self._plan(server, self._now())


def _for_login(wait: CredentialsWait, fingerprint: str) -> bool:
    """Whether a stored credentials wait was for the login configured now (one stored
    without a fingerprint is taken to be)."""
    return wait.fingerprint is None or wait.fingerprint == fingerprint


def _later(known: datetime | None, due: datetime | None) -> datetime | None:
    """The later of two optional instants."""
    if known is None or (due is not None and due > known):
        return due
    return known

"""APScheduler wiring: each server's next run as one dated job, re-planned after each outcome."""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from refreshd.attempt import Attempt, Target
from refreshd.client import Client
from refreshd.config import Config, Credentials, ServerConfig
from refreshd.dispatch import CredentialsGate, Dispatcher, Job
from refreshd.manual import backoff_of, client_for, target_of
from refreshd.metrics import Metrics
from refreshd.planning import Next, earliest_start, next_fire, retry_until
from refreshd.policy import Action, Decision
from refreshd.recorder import CallContext, Recorder
from refreshd.state import StateError, StateStore
from refreshd.windows import Schedule, open_until, spread_offset

__all__ = ["Scheduler", "credentials_fingerprint", "schedule_of", "server_fingerprint"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def schedule_of(config: Config, server: ServerConfig) -> Schedule:
    """A server's timing as the pure window arithmetic wants it."""
    return Schedule(
        name=server.name,
        tz=server.zone,
        windows=server.windows,
        blackouts=config.blackouts_for(server.name),
        every=server.every,
        offset=spread_offset(server.name, config.daemon.spread),
    )


def server_fingerprint(config: Config, server: ServerConfig) -> str:
    """Changes whenever anything about how or when the server is refreshed changes; a
    suspension recorded under another fingerprint ends (SPEC: config change ends it)."""
    parts = (
        server.model_dump_json(),
        repr(config.blackouts_for(server.name)),
        str(config.daemon.spread),
        config.client.source,
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def credentials_fingerprint(credentials: Credentials) -> str:
    """A slow salted hash of user and password, so a credentials wait can end when the
    password changes (even across a restart) without storing anything reversible."""
    secret = f"{credentials.user}\0{credentials.password.get_secret_value()}".encode()
    return hashlib.pbkdf2_hmac("sha256", secret, b"refreshd-credentials-v1", 100_000)[:16].hex()


@dataclass
class _Server:
    """One server's place in the schedule (mutable; guarded by the scheduler's lock)."""

    config: ServerConfig
    schedule: Schedule
    target: Target
    credentials_fp: str
    run_next: Next | None = None
    attempts: int = 0  # calls made for run_next.run so far
    generation: int = 0  # bumped on each re-plan: an older job or answer is stale
    in_flight: bool = False
    job_id: str | None = None


class Scheduler:
    """Plans every server's runs and fires them through the dispatcher.

    Each server has at most one APScheduler job, a DateTrigger at an absolute instant
    computed by our window arithmetic; the job only hands the call to the dispatcher.
    The outcome is recorded (durably) before the server's next run is planned.
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
        self.gate = CredentialsGate()
        self.recorder = Recorder(
            store=store,
            gate=self.gate,
            backoff=backoff_of(config),
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
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={
                # Never drop a run because the process woke up late: our own guard at fire
                # time decides whether it may still start (window, blackout, suspension).
                "misfire_grace_time": None,
                "coalesce": True,
                "max_instances": 1,
            },
        )
        self._servers: dict[str, _Server] = {}
        self._stopping = False
        self._last_loop_beat = monotonic()

    # --- life -------------------------------------------------------------------------

    def start(self) -> None:
        """Load waits from the state store, plan every server, start the timing engine."""
        self._aps.start()
        self._apply_config(self.config, initial=True)

    def stop(self, grace: float) -> bool:
        """No new calls; calls in flight get `grace` seconds. True if all finished."""
        with self._lock:
            self._stopping = True
        self._aps.shutdown(wait=False)
        finished = self.dispatcher.stop(grace)
        self._client.close()
        return finished

    def reload(self, config: Config) -> dict[str, list[str]]:
        """Switch to a new, already validated config; unchanged servers keep their plans."""
        return self._apply_config(config, initial=False)

    # --- health ------------------------------------------------------------------------

    def loop_beat(self) -> None:
        """Ask the timing engine to run a tiny job now; it proves the loop is alive."""
        if not self._stopping:
            self._aps.add_job(self._beat, id="_beat", replace_existing=True)

    def _beat(self) -> None:
        self._last_loop_beat = self._monotonic()

    def loop_alive(self, within: float) -> bool:
        return self._monotonic() - self._last_loop_beat <= within

    def replan_all(self, reason: str) -> None:
        """Re-plan every server not in flight (after a wall-clock jump, say)."""
        with self._lock:
            for server in self._servers.values():
                if not server.in_flight:
                    self._plan(server, self._now(), reason=reason)

    # --- planning ----------------------------------------------------------------------

    def _apply_config(self, config: Config, *, initial: bool) -> dict[str, list[str]]:
        changes: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "kept": []}
        old_credentials = self.config.resolved_credentials()
        new_credentials = config.resolved_credentials()
        credentials_fps = {n: credentials_fingerprint(c) for n, c in new_credentials.items()}
        with self._lock:
            if not initial:
                self.recorder.backoff = backoff_of(config)
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
            for name, server_config in wanted.items():
                fp = server_fingerprint(config, server_config)
                current = self._servers.get(name)
                target = target_of(config, server_config)
                creds_fp = credentials_fps[server_config.credentials]
                if (
                    current is not None
                    and current.config == server_config
                    and current.target == target
                    and current.schedule == schedule_of(config, server_config)
                ):
                    changes["kept"].append(name)
                    continue
                state = states.get(name)
                if (
                    state is not None
                    and state.config_fingerprint not in (None, fp)
                    and state.suspended_until is not None
                ):
                    # Config changed since the suspension began (here or before a restart).
                    self.store.resume_server(name, forget_suspensions=True)
                    self.log.info("server.resumed", server=name, reason="config changed")
                self.store.set_server_fingerprint(name, fp)
                fresh = _Server(server_config, schedule_of(config, server_config), target, creds_fp)
                if current is not None:
                    fresh.generation = current.generation + 1
                    fresh.in_flight = current.in_flight
                    self._unschedule(current)
                    changes["changed"].append(name)
                else:
                    changes["added"].append(name)
                self._servers[name] = fresh
                if not fresh.in_flight:
                    self._plan(fresh, self._now(), reason="config")
        if self.metrics is not None:
            self.metrics.forget_servers(self._servers)
        return changes

    def _sync_credentials_wait(self, name: str, fingerprint: str, *, changed: bool) -> None:
        wait = self.store.credentials_wait(name)
        if changed:
            self.gate.clear(name)
        if wait is None or wait.until <= self._now():
            return
        if wait.fingerprint is not None and wait.fingerprint != fingerprint:
            self.store.clear_credentials_wait(name)
            self.log.info("credentials.resumed", credentials=name, reason="credentials changed")
            return
        self.gate.wait(name, wait.until)

    def _drop(self, name: str) -> None:
        server = self._servers.pop(name)
        server.generation += 1
        self._unschedule(server)
        if self.metrics is not None:
            self.metrics.forget_servers(self._servers)

    def _unschedule(self, server: _Server) -> None:
        if server.job_id is not None:
            # It may have fired already, or be firing now: its generation makes it stale.
            with contextlib.suppress(JobLookupError):
                self._aps.remove_job(server.job_id)
            server.job_id = None

    def _not_before(self, server: _Server, now: datetime) -> datetime:
        """Now, or later while the server is suspended or its credentials wait."""
        try:
            suspended = self.store.server_state(server.config.name).suspended_until
        except StateError as err:
            self.log.error("state.error", server=server.config.name, error=str(err))
            suspended = None
        return earliest_start(now, suspended, self.gate.waiting(server.config.credentials, now))

    def _plan(self, server: _Server, now: datetime, *, reason: str) -> None:
        """Choose the server's next run and put one dated job in the timing engine."""
        if self._stopping:
            return
        name = server.config.name
        start = self._not_before(server, now)

        def done(due: datetime) -> bool:
            return self.store.run_done(name, due)

        previous = server.run_next.run if server.run_next else None
        chosen = next_fire(server.schedule, start, done)
        server.generation += 1
        self._unschedule(server)
        server.run_next = chosen
        if chosen is None or chosen.run != previous:
            server.attempts = 0
        if chosen is None:
            self.log.warning("server.unplanned", server=name, reason="no window ahead")
            return
        job_id = f"{name}#{server.generation}"
        server.job_id = job_id
        self._aps.add_job(
            self._fire,
            trigger="date",
            run_date=chosen.at,
            args=[name, server.generation],
            id=job_id,
        )
        if self.metrics is not None:
            self.metrics.next_slot.labels(name).set(chosen.at.timestamp())

    def _retry(self, server: _Server, at: datetime) -> None:
        server.generation += 1
        self._unschedule(server)
        if server.run_next is None or self._stopping:
            return
        server.run_next = Next(server.run_next.run, at)
        job_id = f"{server.config.name}#{server.generation}"
        server.job_id = job_id
        self._aps.add_job(
            self._fire,
            trigger="date",
            run_date=at,
            args=[server.config.name, server.generation],
            id=job_id,
        )
        if self.metrics is not None:
            self.metrics.next_slot.labels(server.config.name).set(at.timestamp())

    # --- firing ------------------------------------------------------------------------

    def _fire(self, name: str, generation: int) -> None:
        """A server's job is due: check it may still start, then hand it to the pool."""
        with self._lock:
            server = self._servers.get(name)
            if server is None or server.generation != generation or self._stopping:
                return
            server.job_id = None
            now = self._now()
            planned = server.run_next
            assert planned is not None
            run = planned.run
            # The wall clock may have moved, a suspension begun or a wait started since
            # this was planned: never start outside a window, in a blackout, or twice.
            blocked = (
                open_until(server.schedule, now) is None
                or self._not_before(server, now) > now
                or self.store.run_done(name, run.due)
            )
            if blocked:
                self._plan(server, now, reason="re-check")
                return
            server.attempts += 1
            server.in_flight = True
            ctx = CallContext(
                server=name,
                credentials=server.config.credentials,
                attempt=server.attempts,
                slot=run.slot,
                due=run.due,
                retry_until=retry_until(server.schedule, run, now),
                credentials_fingerprint=server.credentials_fp,
            )
            job = Job(
                name,
                server.config.credentials,
                server.target,
                on_done=lambda attempt: self._done(name, generation, ctx, attempt),
                on_skipped=lambda reason: self._skipped(name, generation, reason),
            )
        if not self.dispatcher.submit(job):
            with self._lock:
                server.in_flight = False

    def _done(self, name: str, generation: int, ctx: CallContext, attempt: Attempt) -> None:
        decision = self.recorder.record(ctx, attempt)  # durable before the next plan
        with self._lock:
            server = self._servers.get(name)
            if server is None:
                return
            server.in_flight = False
            if server.generation != generation:
                # Re-configured while the call was in flight: plan from the new config.
                self._plan(server, self._now(), reason="config")
                return
            self._follow(server, decision, ctx)

    def _follow(self, server: _Server, decision: Decision, ctx: CallContext) -> None:
        now = self._now()
        if decision.action is Action.RETRY and decision.at is not None:
            self._retry(server, decision.at)
        elif decision.action is Action.GIVE_UP:
            self._plan(server, max(now, ctx.retry_until or now), reason="slot missed")
        elif decision.action is Action.WAIT_CREDENTIALS:
            for other in self._servers.values():
                if other.config.credentials == server.config.credentials and not other.in_flight:
                    self._plan(other, now, reason="credentials wait")
        else:  # DONE, SUSPEND_SERVER: the store already says what comes next
            self._plan(server, now, reason=str(decision.action))

    def _skipped(self, name: str, generation: int, reason: str) -> None:
        with self._lock:
            server = self._servers.get(name)
            if server is None:
                return
            server.in_flight = False
            if not self._stopping:
                self._plan(server, self._now(), reason=reason)

    # --- views -------------------------------------------------------------------------

    def next_runs(self) -> dict[str, datetime | None]:
        """Each server's next planned start, for status and metrics."""
        with self._lock:
            return {
                name: (s.run_next.at if s.run_next else None) for name, s in self._servers.items()
            }

    def stats(self) -> dict[str, int]:
        return {
            "servers": len(self._servers),
            "in_flight": self.dispatcher.in_flight,
            "pending": self.dispatcher.pending,
        }

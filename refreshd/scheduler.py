"""The daemon's schedule: when each server runs next, firing it, and what follows its outcome."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any

from refreshd.attempt import Target, target_of
from refreshd.binding import schedule_of
from refreshd.client import Client, client_for
from refreshd.clock import Clock
from refreshd.config import Config, ServerConfig
from refreshd.core import planning
from refreshd.core.clusters import CallGroups
from refreshd.core.ledger import Call, Event, Kind, login_key
from refreshd.core.planning import Next, earliest_start, next_fire, retry_until, slot_missed
from refreshd.core.policy import Action, Decision
from refreshd.core.slots import open_until
from refreshd.core.vicidial import Attempt
from refreshd.dispatch import Dispatcher, Job
from refreshd.events import SuccessGaps, state_gauges
from refreshd.metrics import Metrics, StateGauges
from refreshd.runner import Runner
from refreshd.tickets import Refused, Ticket, claim_run
from refreshd.timer import Timer
from refreshd.timing import PlanMemo as _PlanMemo
from refreshd.timing import Server as _Server
from refreshd.timing import fired_together, hold_for_mates, settled

__all__ = ["Scheduler"]


class Scheduler:
    """Plans every server's runs and fires them through the dispatcher.

    Every server's next start is an absolute instant computed by our window arithmetic and
    kept in one heap; APScheduler (the timing engine) holds a single dated job for the
    earliest of them, so 10,000 servers cost one timer, not 10,000 jobs. When it fires,
    each due server is re-checked against the runner's ledger (window, blackout,
    suspension, credentials wait, done) and handed to the dispatcher. The runner settles
    the outcome, durably, before the server's next run is planned.
    """

    def __init__(
        self,
        config: Config,
        *,
        runner: Runner,
        clock: Clock,
        log: Any,
        metrics: Metrics | None = None,
        client: Client | None = None,
        send: Callable[[Client, Target], Attempt] | None = None,
    ) -> None:
        self.config = config
        self.runner = runner
        self.log = log
        self.metrics = metrics
        self._clock = clock
        self._lock = threading.RLock()
        self._client = client or client_for(config)
        self.dispatcher = Dispatcher(
            self._client,
            max_concurrency=config.daemon.max_concurrency,
            gate=runner,
            clock=clock,
            send=send,
        )
        self._servers: dict[str, _Server] = {}
        self.clusters = CallGroups({})  # replaced whole when verify/clusters.py learns anew
        self._timer = Timer(clock, self._wake, self._generation_of)
        self._stopping = False
        self.gaps = SuccessGaps()
        if metrics is not None:
            metrics.in_flight.set_function(lambda: self.dispatcher.in_flight)
            metrics.longest_call.set_function(self.dispatcher.longest_in_flight)
            metrics.watch(self.gauges)

    # --- life -------------------------------------------------------------------------

    def start(self) -> None:
        """Plan every server from the ledger, start the timing engine."""
        self.prepare()
        self._timer.start()

    def prepare(self) -> None:
        """Plan every server from the ledger, without starting the timing engine: a test
        on a fake clock then drives the loop itself with `next_wake` and `run_due`."""
        self._apply_config(self.config, initial=True)

    def next_wake(self) -> datetime | None:
        """The earliest queued instant, the one the timing engine is armed for."""
        with self._lock:
            return self._timer.next_wake()

    def target(self, name: str) -> Target:
        """The request a server's refresh sends, as configured now."""
        with self._lock:
            return self._servers[name].target

    def run_due(self) -> None:
        """What the timing engine does at the armed instant: fire every server due now."""
        self._wake()

    def stop(self, grace: float) -> bool:
        """No new calls; calls in flight get `grace` seconds. True if all finished."""
        with self._lock:
            self._stopping = True
        self._timer.stop()
        finished = self.dispatcher.stop(grace)
        self.runner.events.close()  # the last notifications, within their own bound
        self._client.close()
        return finished

    def reload(self, config: Config) -> dict[str, list[str]]:
        """Switch to a new, already validated config; unchanged servers keep their plans."""
        return self._apply_config(config, initial=False)

    def gauges(self) -> StateGauges:
        """The state gauges, read at each scrape from the ledger and this plan."""
        with self._lock:
            now, timeout = self._clock.now(), self.config.client.timeout.total_seconds()
            plans = {s.name: (s.login, s.run_next) for s in self._servers.values()}
        gaps = self.gaps.at(now)
        return state_gauges(self.runner, plans, now=now, client_timeout=timeout, gaps=gaps)

    # --- health ------------------------------------------------------------------------

    def loop_beat(self) -> None:
        """Ask the timing engine to run a tiny job now; it proves the loop is alive."""
        if not self._stopping:
            self._timer.beat()

    def loop_alive(self, within: float) -> bool:
        return self._timer.alive(within)

    def replan_all(self) -> None:
        """Re-plan every server not in flight (after a wall-clock jump, say)."""
        with self._lock:
            now, memo = self._clock.now(), _PlanMemo()
            for server in self._servers.values():
                if not server.in_flight:
                    self._plan(server, now, memo)
            # The timing engine computed its sleep from the old wall clock: after a forward
            # step it would oversleep, so give it a fresh wake-up to compute from.
            self._timer.arm(force=True)

    def sync_from_store(self) -> None:
        """Take in what another process (a manual `refreshd refresh`) journaled, and
        re-plan the servers it touched. Raises StateError when the store cannot be read."""
        if self._stopping:
            return
        merged = self.runner.sync()
        if merged is None or not (merged.servers or merged.logins):
            return
        with self._lock:
            now = self._clock.now()
            for server in self._servers.values():
                touched = server.name in merged.servers or server.login in merged.logins
                if touched and not server.in_flight:
                    self._plan(server, now)

    # --- configuration -----------------------------------------------------------------

    def _apply_config(self, config: Config, *, initial: bool) -> dict[str, list[str]]:
        changes: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "kept": []}
        old_credentials = self.config.resolved_credentials()
        new_credentials = config.resolved_credentials()
        changed_logins = [
            name
            for name, creds in new_credentials.items()
            if initial or old_credentials.get(name) != creds
        ]
        with self._lock:
            if not initial and (
                config.client != self.config.client or config.secrets() != self.config.secrets()
            ):
                # A new client also for new passwords: it masks every answer with them.
                # Calls in flight finish on the old client, which then closes itself: kept
                # open until stop, 300 reloads took the daemon from 12 to 217 fds.
                self._client = client_for(config)
                self.dispatcher.use_client(self._client).retire()
            self.config = config
            wanted = {server.name: server for server in config.servers}
            for name in list(self._servers):
                if name not in wanted:
                    self._drop(name)
                    changes["removed"].append(name)
            to_plan: list[_Server] = []
            configured: list[ServerConfig] = []
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
                login = login_key(new_credentials[server_config.credentials].user)
                fresh = _Server(server_config, schedule, target, login)
                if current is not None:
                    fresh.generation = current.generation + 1
                    fresh.in_flight, fresh.firing = current.in_flight, current.firing
                    fresh.held, fresh.abandoned = current.held, current.abandoned
                    changes["changed"].append(name)
                else:
                    changes["added"].append(name)
                self._servers[name] = fresh
                configured.append(server_config)
                if not fresh.in_flight:
                    to_plan.append(fresh)
            self.runner.configure(config, configured, changed_logins=changed_logins)
            now, memo = self._clock.now(), _PlanMemo()
            for server in to_plan:
                self._plan(server, now, memo)
            self.gaps.configure({n: s.schedule for n, s in self._servers.items()}, now)
        if self.metrics is not None:
            self.metrics.servers_configured(self._servers)
        return changes

    def _drop(self, name: str) -> None:
        server = self._servers.pop(name)
        server.generation += 1  # its queue entry, and any answer in flight, are now stale
        for held, at in settled(name, server.firing, self._servers):
            self._queue_at(held, at)

    # --- planning ----------------------------------------------------------------------

    def _not_before(self, server: _Server, now: datetime) -> datetime:
        """Now, or later while the server is suspended or its credentials wait."""
        ledger = self.runner.ledger
        return earliest_start(
            now,
            ledger.server(server.name).suspended_until,
            self.runner.waiting(server.login, now),
        )

    def _last_done(self, server: _Server) -> datetime | None:
        done = (self.runner.ledger.server(server.name).last_done, server.taken)
        return max((each for each in done if each is not None), default=None)

    def _plan(self, server: _Server, now: datetime, memo: _PlanMemo | None = None) -> None:
        """Choose the server's next run and queue it. `memo`: shared by one planning pass
        over many servers, where servers with equal schedules get the same answer."""
        if self._stopping:
            return
        previous = server.run_next.run if server.run_next else None
        key = (server.schedule, self._not_before(server, now), self._last_done(server))
        chosen = memo[key] if memo is not None and key in memo else next_fire(*key)
        if memo is not None:
            memo[key] = chosen
        server.run_next = chosen
        if chosen is None or chosen.run != previous:
            if previous is not None and previous.due == server.held:
                server.abandoned = previous.due  # never taken over here: was it finished?
            server.held = None
            if previous is not None and (server.attempts or server.unserved):
                entry = self.runner.ledger.server(server.name)
                done = self._last_done(server)
                outcome = entry.last_outcome if server.attempts else server.unserved
                missed = slot_missed(server.name, previous, chosen, done, outcome, server.attempts)
                self.runner.tell([] if missed is None else [missed])
            server.attempts, server.unserved = 0, None
        if chosen is None:
            # Nothing within the search's horizon (a blackout covers every window): look
            # again when it has passed, or the server would never run again.
            again = planning.look_again_at(key[1])
            fields = {"server": server.name, "reason": "no run ahead", "planning_again_at": again}
            self.runner.tell([Event(Kind.SERVER_UNPLANNED, fields)])
            self._queue_at(server, again)
            return
        self._queue_at(server, chosen.at)

    def _retry(self, server: _Server, at: datetime) -> None:
        if server.run_next is None or self._stopping:
            return
        server.run_next = Next(server.run_next.run, at)
        self._queue_at(server, at)

    def _queue_at(self, server: _Server, at: datetime) -> None:
        server.generation += 1
        self._timer.push(at, server.name, server.generation)

    def _generation_of(self, name: str) -> int | None:
        server = self._servers.get(name)
        return None if server is None else server.generation

    # --- firing ------------------------------------------------------------------------

    def _wake(self) -> None:
        """The earliest queued instant has come: fire every server now due."""
        with self._lock:
            if self._stopping:
                return
            now = self._clock.now()
            # Identical requests, or one cluster's (core/clusters.CallGroups), grouped: each
            # group goes to the dispatcher in one step, so its first call is not answered
            # before its twins ride along, and leaves without waiting for a large burst.
            groups: dict[Hashable, list[_Server]] = {}
            for name in self._timer.pop_due(now):
                server = self._servers[name]
                if server.run_next is None:  # the look again of an unplanned server
                    self._plan(server, now)
                    continue
                if hold_for_mates(server):
                    continue  # queued again once its mates have settled their shared answer
                mates = self.clusters.group_of(server.name, server.login, server.target.key[2])
                groups.setdefault(mates or server.target.key, []).append(server)
            for key, group in groups.items():
                jobs = [job for s in group if (job := self._fire(s, now, key)) is not None]
                fired_together([self._servers[job.server] for job in jobs])
                if jobs and not self.dispatcher.submit_all(jobs):
                    for job in jobs:
                        self._servers[job.server].in_flight = False
            self._timer.arm()

    def _fire(self, server: _Server, now: datetime, group: Hashable) -> Job | None:
        """Re-check a due server and make its call, or re-plan it; under the lock."""
        planned = server.run_next
        assert planned is not None
        run = planned.run
        last_done = self._last_done(server)
        # The wall clock may have moved, a suspension begun or a wait started since this was
        # planned: never start outside a window, in a blackout, or a run already done.
        if (
            open_until(server.schedule, now) is None
            or self._not_before(server, now) > now
            or (last_done is not None and run.due <= last_done)
        ):
            self._plan(server, now)
            return None
        server.attempts += 1
        server.in_flight = True
        generation = server.generation
        call = self.runner.call_for(
            server.config,
            attempt=server.attempts,
            slot=run.slot,
            due=run.due,
            retry_until=retry_until(server.schedule, run, now),
        )
        self.runner.events.starting(call)  # only queues: a ping's /start
        name = server.name
        ticket = Ticket(name, run.due, self.runner.claims, abandoned=server.abandoned)
        server.abandoned = None
        return Job(
            name,
            call.login,
            call.login_fingerprint or "",
            server.target,
            on_done=lambda attempt: self._done(name, generation, call, attempt, ticket),
            on_skipped=lambda reason: self._skipped(name, ticket, reason),
            before_send=None if ticket.claims is None else lambda: claim_run(ticket),
            group=group,
            # Held back in the queue until its window ends (or a blackout starts): skipped
            # then, and planned again. Within the window a late call still goes.
            not_after=open_until(server.schedule, now),
        )

    def _done(self, name: str, gen: int, call: Call, attempt: Attempt, ticket: Ticket) -> None:
        decision = self.runner.settle(call, attempt, ticket)  # durable before the next plan
        with self._lock:
            server = self._servers.get(name)
            if server is not None:
                server.in_flight, server.held = False, None  # claimed here: not elsewhere
                if ticket.refused is not None:  # fenced out: another instance has the run
                    self._not_here(server, ticket)
                elif server.generation != gen:
                    # Re-configured while the call was in flight: plan from the new config.
                    self._plan(server, self._clock.now())
                else:
                    self._follow(server, decision, call)
                for held, at in settled(name, server.firing, self._servers):
                    self._queue_at(held, at)

    def _follow(self, server: _Server, decision: Decision, call: Call) -> None:
        now = self._clock.now()
        if decision.action is Action.RETRY and decision.at is not None:
            self._retry(server, decision.at)
        elif decision.action is Action.GIVE_UP:
            self._plan(server, max(now, call.retry_until or now))
        elif decision.action is Action.WAIT_CREDENTIALS:
            for other in self._servers.values():
                if other.login == server.login and not other.in_flight:
                    self._plan(other, now)
        else:  # DONE, SUSPEND_SERVER: the ledger already says what comes next
            self._plan(server, now)

    def _skipped(self, name: str, ticket: Ticket, reason: str) -> None:
        with self._lock:
            server = self._servers.get(name)
            if server is not None:
                server.in_flight, ticket.refused = False, ticket.refused or Refused.of(reason)
                server.abandoned = server.abandoned or ticket.abandoned  # else the next call's
                if ticket.refused is Refused.LOGIN_HELD:  # nobody may have the run: a miss
                    server.unserved = str(ticket.refused)
                if ticket.refused is not None and not self._stopping:
                    server.attempts = max(0, server.attempts - 1)  # no call was made here
                    self._not_here(server, ticket)
                elif not self._stopping:
                    self._plan(server, self._clock.now())
                for held, at in settled(name, server.firing, self._servers):
                    self._queue_at(held, at)

    def _not_here(self, server: _Server, ticket: Ticket) -> None:
        """Not called (for the record) here: done elsewhere, so past it; else look again."""
        if ticket.refused is Refused.DONE:
            server.taken, server.held = max(ticket.due, server.taken or ticket.due), None
            self._plan(server, self._clock.now())
        elif ticket.claims is not None:  # the run, later, or the next if it is over by then
            server.held = ticket.due if ticket.refused is Refused.HELD else server.held
            self._plan(server, self._clock.now() + ticket.claims.look_again())

"""The bounded pool that sends refresh calls: order, concurrency, de-duplication, login gate."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from refreshd.attempt import Target, refresh
from refreshd.client import Client
from refreshd.clock import Clock
from refreshd.core.clusters import counts_for_mate
from refreshd.core.policy import LOGIN_PROVEN
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.logs import get_logger, utc_text

__all__ = ["Dispatcher", "Job", "LoginGate"]

_log = get_logger()


class LoginGate(Protocol):
    """The login rule the dispatcher asks; the runner answers from its ledger."""

    def waiting(self, login: str, now: datetime) -> datetime | None: ...

    def why_waiting(self, login: str, now: datetime) -> str: ...

    def try_start(self, login: str, password: str, now: datetime) -> bool: ...

    def confirm(self, login: str, password: str) -> str | None: ...

    def prove(self, login: str, password: str) -> bool: ...

    def finished(self, login: str) -> None: ...


@dataclass(eq=False)
class Job:
    """One refresh to send. `on_done` runs on a worker thread, before the credentials'
    slot is released, so what it learns (a refused login) binds the very next call."""

    server: str
    login: str
    """The ledger key of the VICIdial user it logs in as."""
    password: str
    """The fingerprint of the password it logs in with (proven or not)."""
    target: Target
    on_done: Callable[[Attempt], None]
    on_skipped: Callable[[str], None]
    followers: list[Job] = field(default_factory=list)
    before_send: Callable[[], str | Attempt | None] | None = None
    """Run on the worker just before the request goes out (the daemon's claim on the
    run): None to go ahead, else why this job is not called (it is skipped), or the
    answer that settles it without a call (a lost call's refresh found taken)."""
    group: Hashable | None = None
    """What makes two jobs one call; None: the request itself (`target.key`). The scheduler
    gives the entries of one cluster the same group (scheduler.Scheduler.use_clusters)."""
    not_after: datetime | None = None
    """The first instant at which the call may no longer start (a scheduled run: its
    window's end or the next blackout); a job held back until then (its login one call at
    a time, behind a slow one) is skipped, never sent outside its window. None: any time
    (a manual refresh)."""

    @property
    def key(self) -> Hashable:
        return self.target.key if self.group is None else self.group

    def closed(self, now: datetime) -> bool:
        """Whether its run may no longer start at `now` (`not_after` has come)."""
        return self.not_after is not None and now >= self.not_after


class Dispatcher:
    """At most `max_concurrency` calls in flight, started in submission order.

    A job whose request is identical to one pending or in flight (same URL, login and
    server_ip), or of the same group (one cluster, one login), rides along with it and gets
    the same answer: VICIdial's refresh flags every server of the cluster, so sending it
    twice at once only doubles the load.
    A job whose credentials may not log in now is held back (unproven credentials: one
    call at a time) or, during a credentials wait, skipped with a reason; so is a job held
    back until its window ends (`Job.not_after`: never a call outside a window).
    """

    def __init__(
        self,
        client: Client,
        *,
        max_concurrency: int,
        gate: LoginGate,
        clock: Clock,
        send: Callable[[Client, Target], Attempt] | None = None,
    ) -> None:
        self._client = client
        self._gate = gate
        self._clock = clock
        self._send = send or (lambda c, t: refresh(c, t, clock))
        mutex = threading.Lock()
        self._cond = threading.Condition(mutex)  # workers: a job may start
        self._idle = threading.Condition(mutex)  # wait_idle: nothing pending or in flight
        self._pending: deque[Job] = deque()
        self._by_key: dict[Hashable, Job] = {}
        self._in_flight = 0
        self._skipping = 0
        self._started: dict[int, float] = {}  # id(job) -> monotonic start, while in flight
        self._stopping = False
        self._workers = [
            threading.Thread(target=self._work, name=f"refresh-{i}", daemon=True)
            for i in range(max_concurrency)
        ]
        for worker in self._workers:
            worker.start()

    def use_client(self, client: Client) -> Client:
        """Send later calls through `client` (a reload changed the client settings);
        returns the previous one, which calls in flight may still be using."""
        with self._cond:
            previous, self._client = self._client, client
        return previous

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def longest_in_flight(self) -> float:
        """Seconds the oldest call in flight has run (0 when none): past the client's
        deadline, something the deadline cannot cut (a name lookup) holds it."""
        with self._cond:
            oldest = min(self._started.values(), default=None)
        return 0.0 if oldest is None else self._clock.monotonic() - oldest

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no job is pending or in flight (True), or `timeout` seconds pass."""
        with self._idle:
            return self._idle.wait_for(self._idle_now, timeout)

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the dispatcher is stopping (the job is not run)."""
        return self.submit_all([job])

    def submit_all(self, jobs: list[Job]) -> bool:
        """Queue jobs in one step, so identical requests among them are sent once even
        when the first would be answered before the next is queued; False (none queued)
        when the dispatcher is stopping."""
        with self._cond:
            if self._stopping:
                return False
            leaders = 0
            for job in jobs:
                leader = self._by_key.get(job.key)
                if leader is not None:
                    leader.followers.append(job)
                    continue
                self._by_key[job.key] = job
                self._pending.append(job)
                leaders += 1
            self._cond.notify(leaders)
            return True

    def stop(self, grace: float) -> bool:
        """No new calls start; pending jobs are dropped; waits up to `grace` seconds for
        calls in flight. True when none is left running."""
        with self._cond:
            self._stopping = True
            dropped = list(self._pending)
            self._pending.clear()
            for job in dropped:
                self._by_key.pop(job.key, None)
            self._cond.notify_all()
        for job in dropped:
            for each in (job, *job.followers):
                each.on_skipped("shutting down")
        deadline = self._clock.monotonic() + grace
        for worker in self._workers:
            worker.join(max(0.0, deadline - self._clock.monotonic()))
        return not any(w.is_alive() for w in self._workers)

    def _next(self) -> tuple[Job | None, list[tuple[Job, str]]]:
        """The first pending job allowed to start, and the jobs to skip; under the lock."""
        now = self._clock.now()
        skipped: list[tuple[Job, str]] = []
        chosen: Job | None = None
        # Credentials found at their limit in this scan: with 1,000 jobs queued behind one
        # login, asking the gate once per login, not once per job, keeps a scan cheap.
        full: set[str] = set()
        for job in list(self._pending):
            if job.closed(now):
                self._expire(job, now)
                assert job.not_after is not None  # closed: it has one
                closed = utc_text(job.not_after)
                skipped.append((job, f"held back past {closed}, when its window closed"))
                continue
            if job.login in full:
                continue
            until = self._gate.waiting(job.login, now)
            if until is not None:
                self._pending.remove(job)
                self._by_key.pop(job.key, None)
                skipped.append(
                    (
                        job,
                        f"VICIdial user {job.login!r} may not log in until "
                        f"{until.isoformat().replace('+00:00', 'Z')}: "
                        f"{self._gate.why_waiting(job.login, now)}",
                    )
                )
                continue
            if self._gate.try_start(job.login, job.password, now):
                chosen = job
                break
            full.add(job.login)
        if chosen is not None:
            self._pending.remove(chosen)
            self._in_flight += 1
            self._started[id(chosen)] = self._clock.monotonic()
        self._skipping += len(skipped)  # until their callbacks have run: not idle yet
        return chosen, skipped

    def _expire(self, job: Job, now: datetime) -> None:
        """Take `job` out of the queue at `now`, past its `not_after`; under the lock. Its
        riders whose runs may still start (another server of the cluster, its window
        open) stay queued, the first of them in its place, and are not skipped with it."""
        index = self._pending.index(job)
        del self._pending[index]
        self._by_key.pop(job.key, None)
        open_ = [each for each in job.followers if not each.closed(now)]
        if open_:
            job.followers = [each for each in job.followers if each.closed(now)]
            leader, leader.followers = open_[0], open_[1:]
            self._pending.insert(index, leader)
            self._by_key[leader.key] = leader

    def _until_expiry(self) -> float | None:
        """Seconds until the first pending job may no longer start (None: no such job), so
        that a worker wakes to skip it then, and its slot is told missed then, not when
        the call it waited behind ends; under the lock."""
        ends = [job.not_after for job in self._pending if job.not_after is not None]
        return None if not ends else max(0.0, (min(ends) - self._clock.now()).total_seconds())

    def _idle_now(self) -> bool:
        return not self._pending and not self._in_flight and not self._skipping

    def _notify_if_idle(self) -> None:
        """Under the lock: tell `wait_idle` once the last job has been handed back."""
        if self._idle_now():
            self._idle.notify_all()

    def _release(self, job: Job, *, proven_now: bool = False) -> None:
        """The job's credentials slot is free again: wake a worker that may be waiting on it.

        One, not all, unless the login was just proven (its cap rose from one call to
        several): a freed slot lets at most one more job start, and idle workers are
        alike. Waking all 16 (or 64) after every answer made each rescan the queue while
        holding up the one call that could start (docs/PERFORMANCE.md).
        """
        self._gate.finished(job.login)
        with self._cond:
            if proven_now:
                self._cond.notify_all()
            else:
                self._cond.notify()

    def _send_safely(self, job: Job) -> Attempt:
        started = self._clock.now()
        try:
            with self._cond:
                client = self._client
            return self._send(client, job.target)
        except Exception:
            _log.exception("refresh.error", server=job.server)
            answer = Answer(Outcome.UNEXPECTED, "internal error while sending; see refresh.error")
            return Attempt(answer, started, 0)

    def _hand_back(self, job: Job, going: list[Job], attempt: Attempt) -> None:
        """The answer to each job that went (`going`: the job and its riders cleared to go);
        a rider through another web server of the cluster, whose answer spoke only of the
        job's web server, is sent on its own (after the job's answer is recorded: what it
        taught the login gate binds it), on the claim it already holds."""
        outcome = attempt.answer.outcome
        alone = [r for r in going if r is not job and not _counts_for(job, r, outcome)]
        for each in going:
            if each in alone:
                continue
            try:
                each.on_done(attempt)
            except Exception:
                # A bug in recording must not kill the worker or skip the others.
                _log.exception("refresh.error", server=each.server)
        own = [replace(r, group=None, followers=[], before_send=None) for r in alone]
        if own and not self.submit_all(own):
            for each in own:
                each.on_skipped("shutting down")

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    job, skipped = self._next()
                    if job is not None or skipped or self._stopping:
                        break
                    self._cond.wait(self._until_expiry())
            for each_job, reason in skipped:
                for each in (each_job, *each_job.followers):
                    each.on_skipped(reason)
            if skipped:
                with self._cond:
                    self._skipping -= len(skipped)
                    self._notify_if_idle()
            if job is None:
                if self._stopping:
                    return
                continue
            self._run(job)

    def _drop_late(self, job: Job, seen: list[Job], *, sent: bool = False) -> list[Job]:
        """From here on, a new identical job is a new request. Riders that came while the
        call was cleared or out: those with nothing to clear share the answer (returned),
        those with a claim to take are skipped (and planned again)."""
        with self._cond:
            self._by_key.pop(job.key, None)
            late = [each for each in job.followers if each not in seen]
        riding = [each for each in late if sent and each.before_send is None]
        for each in late:
            if each not in riding:
                each.on_skipped("came after the identical call was cleared")
        return riding

    def _cleared(self, jobs: list[Job]) -> tuple[list[Job], Attempt | None]:
        """The job and its riders (`jobs`, the job first) that may be called now: the
        login confirmed (the shared lease of an unproven login), then each one's claim;
        the others are skipped. And a settled answer, if one's claim found its lost call's
        refresh taken: one cluster's refresh, so it stands for all of them, with no call."""
        reason = self._gate.confirm(jobs[0].login, jobs[0].password)
        going: list[Job] = []
        settled: Attempt | None = None
        for each in jobs:
            why: str | Attempt | None = reason
            if why is None and each.before_send is not None:
                try:
                    why = each.before_send()
                except Exception:
                    _log.exception("refresh.error", server=each.server)
                    why = "internal error while claiming; see refresh.error"
            if isinstance(why, Attempt):
                settled = settled or why
                going.append(each)
            elif why is None:
                going.append(each)
            else:
                each.on_skipped(why)
        return going, settled

    def _run(self, job: Job) -> None:
        """Send a chosen job (unless nothing of it may go) and hand its answer back."""
        released = False
        try:
            seen = [job, *job.followers]
            going, settled = self._cleared(seen)
            if not going or settled is not None:
                self._drop_late(job, seen)
                if going and settled is not None:
                    self._hand_back(job, going, settled)
                return
            attempt = self._send_safely(job)
            outcome = attempt.answer.outcome
            if outcome in LOGIN_PROVEN:
                proven_now = self._gate.prove(job.login, job.password)
                # The login worked: nothing the recording below can learn would close
                # the gate, so the next call with these credentials need not wait for it.
                released = True
                self._release(job, proven_now=proven_now)
            going += self._drop_late(job, seen, sent=True)
            self._hand_back(job, going, attempt)
        finally:
            if not released:
                self._release(job)
            with self._cond:
                self._in_flight -= 1
                self._started.pop(id(job), None)
                self._notify_if_idle()


def _counts_for(leader: Job, rider: Job, outcome: Outcome) -> bool:
    """Whether the leader's answer is the rider's too. Always for an identical request; for
    one cluster's entry through another web server (or naming another server_ip), not when
    the answer speaks only of the leader's web server (or server_ip)
    (core/clusters.counts_for_mate): that entry then calls on its own."""
    same = (leader.target.api_url, leader.target.verify) == (
        rider.target.api_url,
        rider.target.verify,
    )
    return counts_for_mate(
        outcome,
        same_web_server=same,
        same_server_ip=leader.target.server_ip == rider.target.server_ip,
    )

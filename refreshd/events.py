"""The one place where the ledger becomes log lines and metrics: each change as it
happens, and the state gauges read from it at each scrape."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from refreshd.clock import Clock, system_clock
from refreshd.core.ledger import Call, Event, Kind, Ledger
from refreshd.core.planning import Next, success_gap
from refreshd.core.policy import LoginWait
from refreshd.core.slots import Schedule
from refreshd.core.verification import Applied, Verdict
from refreshd.core.vicidial import Attempt, Outcome
from refreshd.metrics import Metrics, ServerGauges, StateGauges

if TYPE_CHECKING:
    from refreshd.config import Config
    from refreshd.notify import Notifications

__all__ = ["Events", "LedgerView", "SuccessGaps", "state_gauges"]

_LEVELS: dict[Kind, str] = {
    Kind.REFRESH_SUCCEEDED: "info",
    Kind.REFRESH_SETTLED: "info",
    Kind.REFRESH_RETRYING: "warning",
    Kind.REFRESH_FAILED: "error",
    Kind.SERVER_SUSPENDED: "warning",
    Kind.SERVER_RESUMED: "info",
    Kind.CREDENTIALS_SUSPENDED: "warning",
    Kind.CREDENTIALS_RESUMED: "info",
    Kind.REFRESH_SKIPPED: "error",
    Kind.SLOT_MISSED: "error",
    Kind.SERVER_UNPLANNED: "warning",
}


class Events:
    """Tells the log, the metrics and (in the daemon) the webhooks and pings what changed.
    Thread-safe as its parts are."""

    def __init__(
        self, log: Any, metrics: Metrics | None = None, clock: Clock | None = None
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.notifications: Notifications | None = None  # the daemon's; it only queues
        self._clock = clock or system_clock
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None  # monotonic, while the store fails
        # Which of the store's parts fail ("journal", "claims"): the outage ends when all
        # answer again. The journal's heartbeat answering must not end (and so flap) an
        # outage of the claims alone (a lock on their table, a twin instance's name).
        self._failing: set[str] = set()

    def configure(self, config: Config) -> None:
        if self.notifications is not None:
            self.notifications.configure(config)

    def close(self) -> None:
        """Deliver the queued notifications, within the sender's bound (at stop)."""
        if self.notifications is not None:
            self.notifications.stop()

    def emit(self, events: Iterable[Event]) -> None:
        for event in events:
            level = _LEVELS[event.kind]
            getattr(self.log, level)(str(event.kind), **event.fields)
            self._count(event)
            if self.notifications is not None:
                self.notifications.event(str(event.kind), level, event.fields)

    def starting(self, call: Call) -> None:
        """A scheduled call is sent: its slot's first one pings /start."""
        if self.notifications is not None and call.slot is not None:
            self.notifications.starting(call.server, call.slot.start)

    def called(self, server: str, attempt: Attempt, due: datetime | None = None) -> None:
        """A call ended (whatever it changed): its outcome and duration; `due`: the due
        instant of the scheduled run it was the first call of (its lag)."""
        if self.metrics is None or attempt.answer.outcome is Outcome.SETTLED:
            return  # a settled run made no call: nothing to count or time
        self.metrics.refresh_total.labels(server, str(attempt.answer.outcome)).inc()
        self.metrics.refresh_duration.observe(attempt.duration_ms / 1000)
        if due is not None:
            lag = (attempt.started_at - due).total_seconds()
            self.metrics.refresh_lag.observe(max(lag, 0.0))

    def verified(self, server: str, started: datetime, verdict: Verdict) -> None:
        """The verdict on a verified refresh of `server` sent at `started`."""
        seconds = round(verdict.seconds, 3)
        # The metrics first, then the line: whoever reads the line (an operator, a test)
        # and then scrapes finds the verdict counted.
        if isinstance(verdict, Applied):
            if self.metrics is not None:
                self.metrics.apply_seconds.observe(verdict.seconds)
                self.metrics.unapplied_servers.labels(server).set(0)
                applied_at = started + timedelta(seconds=verdict.seconds)
                self.metrics.last_applied.labels(server).set(applied_at.timestamp())
            fields: dict[str, object] = {"server": server, "seconds": seconds}
            self._told("refresh.applied", "info", {**fields, "boxes": verdict.boxes})
            return
        flagged = [{"server_ip": ip, "server_id": sid} for ip, sid in verdict.flagged]
        if verdict.unread is not None:
            fields = {"server": server, "seconds": seconds, "error": verdict.unread}
            self._told("refresh.not_applied", "error", fields)
            return
        if self.metrics is not None:
            self.metrics.unapplied_servers.labels(server).set(len(flagged))
        fields = {
            "server": server,
            "seconds": seconds,
            "flagged": flagged,
            "boxes": verdict.boxes,
            "applied": verdict.boxes - len(flagged),
        }
        self._told("refresh.not_applied", "error", fields)

    def _told(self, event: str, level: str, fields: dict[str, object]) -> None:
        """An event that changes no ledger entry (a verdict): logged and notified."""
        getattr(self.log, level)(event, **fields)
        if self.notifications is not None:
            self.notifications.event(event, level, fields)

    # --- claims (shared/claims.py, claiming.py) ------------------------------------------

    def claim_taken_over(self, server: str, due: datetime, old: str, maybe_called: bool) -> None:
        """This instance took over a run whose holder's lease ran out; `maybe_called`: the
        holder had marked the call as sent, so the run may be refreshed twice."""
        self.log.warning(
            "claim.taken_over", server=server, due=due, from_instance=old, maybe_called=maybe_called
        )
        if self.metrics is not None:
            self.metrics.claims_taken_over.labels(str(maybe_called).lower()).inc()

    def claim_abandoned(
        self, server: str, due: datetime, holder: str, state: str, maybe_called: bool
    ) -> None:
        """A run held by another instance, never finished and now superseded by the
        server's next run: nobody takes it over. `maybe_called`: its call may have gone out
        and nothing records whether it was answered."""
        self.log.warning(
            "claim.abandoned",
            server=server,
            due=due,
            holder=holder,
            state=state,
            maybe_called=maybe_called,
        )
        if self.metrics is not None:
            self.metrics.claims_abandoned.labels(str(maybe_called).lower()).inc()

    def claim_lost(self, server: str, due: datetime, reason: str) -> None:
        self.log.warning("claim.lost", server=server, due=due, reason=reason)
        if self.metrics is not None:
            self.metrics.claims_lost.inc()

    def store_failed(self, error: str, **fields: object) -> None:
        """The store failed (a write, a read, a claim's renewal): `state.error` once per
        outage, as it starts. What fails again in the same outage is not said again: every
        heartbeat, renewal and call would each say it, and bury the one line that matters."""
        with self._outage_lock:
            self._failing.add(str(fields.get("store", "journal")))
            first = self._outage_since is None
            if first:
                self._outage_since = self._clock.monotonic()
        if first:
            self.log.error("state.error", error=error, **fields)

    def store_answered(self, store: str = "journal") -> None:
        """That part of the store answered: an outage under way ends once every failing
        part has, said once (`state.recovered`)."""
        with self._outage_lock:
            self._failing.discard(store)
            since = None if self._failing else self._outage_since
            if since is not None:
                self._outage_since = None
        if since is not None:
            seconds = round(self._clock.monotonic() - since, 3)
            self.log.info("state.recovered", outage_s=seconds)

    def instances(self, me: str, live: Iterable[str]) -> None:
        """`refreshd_instance_up`: this instance, and the others live per the table."""
        if self.metrics is None:
            return
        self.metrics.instance_up.clear()
        for name in {me, *live}:
            self.metrics.instance_up.labels(name).set(1)

    def schedules_compared(self, me: str, differing: list[str]) -> None:
        """The live instances whose configs plan other runs than this one's, as it changed:
        each run is claimed by its due instant, so theirs and ours never collide and the
        fleet refreshes both schedules."""
        if differing:
            self.log.warning(
                "instances.schedules_differ",
                instance=me,
                others=differing,
                advice="give every instance the same servers' windows, every, time zone, "
                "spread and blackouts (and reload each): until then each plans its own runs, "
                "and the cluster is refreshed on both schedules",
            )
        else:
            self.log.info("instances.schedules_agree", instance=me)

    def _count(self, event: Event) -> None:
        if self.metrics is not None and event.kind is Kind.SLOT_MISSED:
            self.metrics.slots_missed.labels(str(event.fields["server"])).inc()


class LedgerView(Protocol):
    """What the state gauges read: the runner's ledger and its login gate."""

    @property
    def ledger(self) -> Ledger: ...

    def login_name(self, login: str) -> str: ...

    def wait_of(self, login: str, now: datetime) -> LoginWait | None: ...


class SuccessGaps:
    """Each server's success gap (`planning.success_gap`), worked out from its schedule
    when the config is loaded or reloaded and again on the first scrape of each UTC day (as
    the plan moves on), never at every scrape. Thread-safe: scrapes read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schedules: dict[str, Schedule] = {}
        self._day: date | None = None
        self._gaps: dict[str, timedelta | None] = {}

    def configure(self, schedules: Mapping[str, Schedule], now: datetime) -> None:
        with self._lock:
            self._schedules = dict(schedules)
            self._work_out(now)

    def at(self, now: datetime) -> Mapping[str, timedelta | None]:
        with self._lock:
            if now.astimezone(UTC).date() != self._day:
                self._work_out(now)
            return self._gaps

    def _work_out(self, now: datetime) -> None:
        self._day = now.astimezone(UTC).date()
        self._gaps = {name: success_gap(s, now) for name, s in self._schedules.items()}


def state_gauges(
    view: LedgerView,
    plans: Mapping[str, tuple[str, Next | None]],
    *,
    now: datetime,
    client_timeout: float,
    gaps: Mapping[str, timedelta | None] | None = None,
) -> StateGauges:
    """The state gauges read from the ledger and the plan: `plans` gives each configured
    server's login and next run (None when nothing is planned); `gaps` each one's success
    gap (`SuccessGaps`)."""
    ledger = view.ledger
    servers = {
        name: ServerGauges(
            last_success=entry.last_success_at,
            first_seen=entry.first_seen,
            next_run=None if planned is None else planned.at,
            suspended=entry.suspended_at(now) is not None,
            success_gap=(gaps or {}).get(name),
            last_call=None
            if entry.last_attempt_at is None or entry.last_outcome is None
            else (entry.last_attempt_at, str(entry.last_outcome)),
            credentials=view.login_name(login),
        )
        for name, (login, planned) in plans.items()
        for entry in (ledger.server(name),)
    }
    logins = {login for login, _ in plans.values()}
    return StateGauges(
        servers=servers,
        credentials_waiting={
            view.login_name(key): None if wait is None else wait.kind
            for key in logins
            for wait in (view.wait_of(key, now),)
        },
        client_timeout=client_timeout,
    )

"""The one place where the ledger becomes log lines and metrics: each change as it
happens, and the state gauges read from it at each scrape."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from refreshd.core.ledger import Event, Kind, Ledger
from refreshd.core.planning import Next
from refreshd.core.verification import Applied, Verdict
from refreshd.core.vicidial import Attempt
from refreshd.metrics import Metrics, ServerGauges, StateGauges

__all__ = ["Events", "LedgerView", "state_gauges"]

_LEVELS: dict[Kind, str] = {
    Kind.REFRESH_SUCCEEDED: "info",
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
    """Tells the log and the metrics what changed. Thread-safe as its parts are."""

    def __init__(self, log: Any, metrics: Metrics | None = None) -> None:
        self.log = log
        self.metrics = metrics

    def emit(self, events: Iterable[Event]) -> None:
        for event in events:
            getattr(self.log, _LEVELS[event.kind])(str(event.kind), **event.fields)
            self._count(event)

    def called(self, server: str, attempt: Attempt) -> None:
        """A call ended (whatever it changed): its outcome and duration."""
        if self.metrics is None:
            return
        self.metrics.refresh_total.labels(server, str(attempt.answer.outcome)).inc()
        self.metrics.refresh_duration.observe(attempt.duration_ms / 1000)

    def verified(self, server: str, started: datetime, verdict: Verdict) -> None:
        """The verdict on a verified refresh of `server` sent at `started`."""
        seconds = round(verdict.seconds, 3)
        if isinstance(verdict, Applied):
            self.log.info("refresh.applied", server=server, seconds=seconds, boxes=verdict.boxes)
            if self.metrics is not None:
                self.metrics.apply_seconds.observe(verdict.seconds)
                self.metrics.unapplied_servers.labels(server).set(0)
                applied_at = started + timedelta(seconds=verdict.seconds)
                self.metrics.last_applied.labels(server).set(applied_at.timestamp())
            return
        flagged = [{"server_ip": ip, "server_id": sid} for ip, sid in verdict.flagged]
        if verdict.unread is not None:
            self.log.error(
                "refresh.not_applied", server=server, seconds=seconds, error=verdict.unread
            )
            return
        self.log.error(
            "refresh.not_applied",
            server=server,
            seconds=seconds,
            flagged=flagged,
            boxes=verdict.boxes,
            applied=verdict.boxes - len(flagged),
        )
        if self.metrics is not None:
            self.metrics.unapplied_servers.labels(server).set(len(flagged))

    def _count(self, event: Event) -> None:
        if self.metrics is not None and event.kind is Kind.SLOT_MISSED:
            self.metrics.slots_missed.labels(str(event.fields["server"])).inc()


class LedgerView(Protocol):
    """What the state gauges read: the runner's ledger and its login gate."""

    @property
    def ledger(self) -> Ledger: ...

    def login_name(self, login: str) -> str: ...

    def waiting(self, login: str, now: datetime) -> datetime | None: ...


def state_gauges(
    view: LedgerView,
    plans: Mapping[str, tuple[str, Next | None]],
    *,
    now: datetime,
    client_timeout: float,
) -> StateGauges:
    """The state gauges read from the ledger and the plan: `plans` gives each configured
    server's login and next run (None when nothing is planned)."""
    ledger = view.ledger
    servers = {
        name: ServerGauges(
            last_success=entry.last_success_at,
            first_seen=entry.first_seen,
            next_run=None if planned is None else planned.at,
            suspended=entry.suspended_at(now) is not None,
        )
        for name, (_, planned) in plans.items()
        for entry in (ledger.server(name),)
    }
    logins = {login for login, _ in plans.values()}
    return StateGauges(
        servers=servers,
        credentials_waiting={
            view.login_name(key): view.waiting(key, now) is not None for key in logins
        },
        client_timeout=client_timeout,
    )

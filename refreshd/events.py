"""The one place where a change of the ledger becomes log lines and metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from refreshd.core.ledger import Event, Kind, Ledger
from refreshd.core.vicidial import Attempt, Outcome
from refreshd.metrics import Metrics

__all__ = ["Events"]

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

    def called(self, server: str, credentials: str, attempt: Attempt) -> None:
        """A call ended (whatever it changed): its outcome and duration."""
        if self.metrics is None:
            return
        self.metrics.refresh_total.labels(server, str(attempt.answer.outcome)).inc()
        self.metrics.refresh_duration.observe(attempt.duration_ms / 1000)
        if attempt.answer.outcome is Outcome.OK:
            self.metrics.last_success.labels(server).set(attempt.started_at.timestamp())
            self.metrics.credentials_waiting.labels(credentials).set(0)

    def show(
        self,
        ledger: Ledger,
        servers: Iterable[str],
        logins: Mapping[str, str],
        now: datetime,
    ) -> None:
        """Set the gauges from a ledger (at start): `logins` maps each key to its name."""
        m = self.metrics
        if m is None:
            return
        for name in servers:
            entry = ledger.server(name)
            m.suspended.labels(name).set(1 if entry.suspended_at(now) is not None else 0)
            if entry.last_success_at is not None:
                m.last_success.labels(name).set(entry.last_success_at.timestamp())
        for key, label in logins.items():
            waiting = ledger.login(key).waiting_at(now) is not None
            m.credentials_waiting.labels(label).set(1 if waiting else 0)

    def _count(self, event: Event) -> None:
        m = self.metrics
        if m is None:
            return
        fields = event.fields
        if event.kind is Kind.SERVER_SUSPENDED:
            m.suspended.labels(str(fields["server"])).set(1)
        elif event.kind in (Kind.SERVER_RESUMED, Kind.REFRESH_SUCCEEDED):
            m.suspended.labels(str(fields["server"])).set(0)
        elif event.kind is Kind.CREDENTIALS_SUSPENDED:
            m.credentials_waiting.labels(str(fields["credentials"])).set(1)
        elif event.kind is Kind.CREDENTIALS_RESUMED:
            m.credentials_waiting.labels(str(fields["credentials"])).set(0)
        elif event.kind is Kind.SLOT_MISSED:
            m.slots_missed.labels(str(fields["server"])).inc()

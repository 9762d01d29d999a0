"""Prometheus metrics: every series refreshd exports (served by refreshd/httpd.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from refreshd import __version__

__all__ = ["Metrics"]

# Calls take from tens of milliseconds to the client's time-out.
_DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every metric refreshd exports, in a registry of its own (tests make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.refresh_total = Counter(
            "refreshd_refresh",
            "Refresh calls by server and outcome.",
            ["server", "outcome"],
            registry=r,
        )
        self.refresh_duration = Histogram(
            "refreshd_refresh_duration_seconds",
            "Time from sending a refresh call to its outcome.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "refreshd_last_success_timestamp_seconds",
            "Unix time of the server's last successful refresh.",
            ["server"],
            registry=r,
        )
        self.next_slot = Gauge(
            "refreshd_next_slot_timestamp_seconds",
            "Unix time of the server's next planned refresh.",
            ["server"],
            registry=r,
        )
        self.suspended = Gauge(
            "refreshd_server_suspended",
            "1 while the server is suspended (permission, not found, bad request).",
            ["server"],
            registry=r,
        )
        self.credentials_waiting = Gauge(
            "refreshd_credentials_waiting",
            "1 while the credentials wait after a refused login or a lock-out.",
            ["credentials"],
            registry=r,
        )
        self.slots_missed = Counter(
            "refreshd_slots_missed", "Slots that ended without success.", ["server"], registry=r
        )
        self.config_reloads = Counter(
            "refreshd_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.in_flight = Gauge(
            "refreshd_calls_in_flight", "Refresh calls in flight now.", registry=r
        )
        self.longest_call = Gauge(
            "refreshd_longest_call_seconds",
            "How long the oldest refresh call in flight has run; 0 when none.",
            registry=r,
        )
        self.info = Gauge("refreshd_build_info", "refreshd's version.", ["version"], registry=r)
        self.info.labels(__version__).set(1)

    def forget_servers(self, keep: Iterable[str]) -> None:
        """Drop per-server series of servers no longer configured (after a reload)."""
        keep_set = set(keep)
        for family in (self.last_success, self.next_slot, self.suspended):
            for labels in list(_label_values(family)):
                if labels[0] not in keep_set:
                    family.remove(*labels)


def _label_values(metric: Any) -> list[tuple[str, ...]]:
    # prometheus-client has no public listing of a labelled metric's children.
    with metric._lock:
        return list(metric._metrics.keys())

"""Prometheus metrics: every series refreshd exports (served by refreshd/httpd.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from refreshd import __version__
from refreshd.core.policy import WaitKind

__all__ = ["Metrics", "ServerGauges", "StateGauges"]

# Calls take from tens of milliseconds to the client's time-out.
_DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Keepalives run from cron every minute: a refresh applies within seconds to a minute or
# two; verify_timeout is at most an hour.
# A run fires within milliseconds of its due instant (bench/accuracy.py); seconds and more
# are a loaded machine, and minutes a catch-up after downtime or a hold.
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
_APPLY_BUCKETS = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 3600.0)


@dataclass(frozen=True)
class ServerGauges:
    """One server's state as the gauges show it."""

    last_success: datetime | None
    first_seen: datetime | None
    next_run: datetime | None  # None: nothing planned
    suspended: bool
    success_gap: timedelta | None = None  # None: fewer than two slots to expect a success in
    last_call: tuple[datetime, str] | None = None  # the latest call: when, and its outcome
    credentials: str | None = None  # how refreshd_credentials_waiting names its login


@dataclass(frozen=True)
class StateGauges:
    """Every state gauge's value at one instant (see `Metrics.watch`)."""

    servers: Mapping[str, ServerGauges]
    credentials_waiting: Mapping[str, WaitKind | None]  # by credentials' name: the wait's kind
    client_timeout: float  # seconds


def _notify_counters(registry: CollectorRegistry) -> tuple[Counter, Counter, Counter]:
    """Webhook notifications and pings (notify/sender.py), by kind: notification or ping."""
    sent, failed, dropped = (
        Counter(f"refreshd_notify_{what}", help_text, ["kind"], registry=registry)
        for what, help_text in (
            ("sent", "Notifications and pings delivered."),
            ("failed", "Notifications and pings given up after their retries."),
            ("dropped", "Notifications and pings dropped: the queue was full, or at stop."),
        )
    )
    return sent, failed, dropped


class Metrics:
    """Every metric refreshd exports, in a registry of its own (tests make several).

    Counters and the histogram count events as they happen (events.py). The state gauges
    (last success, next run, suspended, waiting...) are read when /metrics is scraped from
    what `watch` was given, so they can never drift from the ledger and the plan.
    """

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
        self.refresh_lag = Histogram(
            "refreshd_refresh_lag_seconds",
            "From a scheduled run's due instant to its first call being sent: the firing "
            "delay, and for a catch-up the time the daemon was down or the server held.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.slots_missed = Counter(
            "refreshd_slots_missed",
            "Slots that ended without success although a refresh was tried in them.",
            ["server"],
            registry=r,
        )
        self.apply_seconds = Histogram(
            "refreshd_refresh_apply_seconds",
            "Time from a verified refresh call to every telephony server having applied it.",
            buckets=_APPLY_BUCKETS,
            registry=r,
        )
        self.unapplied_servers = Gauge(
            "refreshd_unapplied_servers",
            "Telephony servers still flagged for a rebuild at the server's last verification "
            "(absent before the first, and while its database cannot be read).",
            ["server"],
            registry=r,
        )
        self.last_applied = Gauge(
            "refreshd_last_applied_timestamp_seconds",
            "Unix time every telephony server was last seen to have applied a refresh.",
            ["server"],
            registry=r,
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
        self.notify_sent, self.notify_failed, self.notify_dropped = _notify_counters(r)
        self._shared(r)
        self._state: _StateCollector | None = None

    def _shared(self, r: CollectorRegistry) -> None:
        """The instances sharing a store (claiming.py): takeovers, lost claims, who is up;
        and which refreshd this is."""
        self.info = Gauge("refreshd_build_info", "refreshd's version.", ["version"], registry=r)
        self.info.labels(__version__).set(1)
        self.claims_taken_over = Counter(
            "refreshd_claims_taken_over",
            "Runs this instance took over from an instance whose lease ran out; "
            "maybe_called: that instance may have sent the call (counted at-least-once).",
            ["maybe_called"],
            registry=r,
        )
        self.claims_abandoned = Counter(
            "refreshd_claims_abandoned",
            "Runs held by another instance, never finished, that this instance moved past "
            "(the next run came first); maybe_called: that instance may have sent the call.",
            ["maybe_called"],
            registry=r,
        )
        self.claims_lost = Counter(
            "refreshd_claims_lost",
            "Claims this instance lost (lease lapsed, or its result refused by fencing).",
            registry=r,
        )
        self.instance_up = Gauge(
            "refreshd_instance_up",
            "1 for each instance live in the shared store (this one always), by name.",
            ["instance"],
            registry=r,
        )

    def watch(self, read: Callable[[], StateGauges]) -> None:
        """Serve the state gauges from `read()`, called at each scrape."""
        if self._state is not None:
            self.registry.unregister(self._state)
        self._state = _StateCollector(read)
        self.registry.register(self._state)

    def servers_configured(self, names: Iterable[str]) -> None:
        """Per-server counters start at 0 for every configured server (an alert on their
        increase then sees the first one) and go with a server no longer configured."""
        keep = set(names)
        for name in keep:
            self.slots_missed.labels(name)
        families = (
            self.slots_missed,
            self.refresh_total,
            self.unapplied_servers,
            self.last_applied,
        )
        for family in families:
            for labels in _label_values(family):
                if labels[0] not in keep:
                    family.remove(*labels)


# name, help, and the label the family is keyed by (None: unlabelled)
_STATE_FAMILIES: dict[str, tuple[str, str | None]] = {
    "refreshd_last_success_timestamp_seconds": (
        "Unix time of the server's last successful refresh; absent before the first.",
        "server",
    ),
    "refreshd_last_call_timestamp_seconds": (
        "Unix time of the server's latest call, in the series labelled with its outcome; "
        "absent before the first.",
        "server",
    ),
    "refreshd_server_first_seen_timestamp_seconds": (
        "Unix time a daemon first had the server in its config (kept in the state file).",
        "server",
    ),
    "refreshd_next_slot_timestamp_seconds": (
        "Unix time of the server's next planned refresh; absent while nothing is planned.",
        "server",
    ),
    "refreshd_server_success_gap_seconds": (
        "The longest the server can go without a success while every slot succeeds: the "
        "longest from one slot's start to the end of the next, over the five weeks before "
        "and after now (alert on time since the last success beyond it).",
        "server",
    ),
    "refreshd_server_unplanned": (
        "1 while the server has no refresh planned: blackouts cover its windows as far "
        "as the planner searches (400 days).",
        "server",
    ),
    "refreshd_server_suspended": (
        "1 while the server is suspended (permission, IP, not found, bad request).",
        "server",
    ),
    "refreshd_server_credentials": (
        "1 for each server, in the series labelled with the credentials it logs in with, as "
        "refreshd_credentials_waiting names them (join the two to see a server's wait).",
        "server",
    ),
    "refreshd_credentials_waiting": (
        "1 while no login with these credentials may be tried, in the series whose reason "
        "says why: refused_login, locked_out, failed_login_budget (calls that were or may "
        "have been failed logins, e.g. during a web server outage); 0 in the others.",
        "credentials",
    ),
    "refreshd_client_timeout_seconds": (
        "client.timeout: the longest a call may take (a call in flight longer is stuck).",
        None,
    ),
}


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], StateGauges]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return [_family(name) for name in _STATE_FAMILIES]

    def collect(self) -> list[Metric]:
        state = self._read()
        families = {name: _family(name) for name in _STATE_FAMILIES}

        def add(name: str, label: str, value: float) -> None:
            families[name].add_metric([label], value)

        for server, gauges in sorted(state.servers.items()):
            if gauges.last_success is not None:
                add(
                    "refreshd_last_success_timestamp_seconds",
                    server,
                    gauges.last_success.timestamp(),
                )
            if gauges.last_call is not None:
                at, outcome = gauges.last_call
                families["refreshd_last_call_timestamp_seconds"].add_metric(
                    [server, outcome], at.timestamp()
                )
            if gauges.first_seen is not None:
                add(
                    "refreshd_server_first_seen_timestamp_seconds",
                    server,
                    gauges.first_seen.timestamp(),
                )
            if gauges.next_run is not None:
                add("refreshd_next_slot_timestamp_seconds", server, gauges.next_run.timestamp())
            if gauges.success_gap is not None:
                seconds = gauges.success_gap.total_seconds()
                add("refreshd_server_success_gap_seconds", server, seconds)
            add("refreshd_server_unplanned", server, float(gauges.next_run is None))
            add("refreshd_server_suspended", server, float(gauges.suspended))
            if gauges.credentials is not None:
                families["refreshd_server_credentials"].add_metric(
                    [server, gauges.credentials], 1.0
                )
        for credentials, waiting in sorted(state.credentials_waiting.items()):
            for kind in WaitKind:
                families["refreshd_credentials_waiting"].add_metric(
                    [credentials, str(kind)], float(waiting is kind)
                )
        families["refreshd_client_timeout_seconds"].add_metric([], state.client_timeout)
        return list(families.values())


# Families keyed by a second label too.
_SECOND_LABEL = {
    "refreshd_credentials_waiting": "reason",
    "refreshd_last_call_timestamp_seconds": "outcome",
    "refreshd_server_credentials": "credentials",
}


def _family(name: str) -> GaugeMetricFamily:
    text, label = _STATE_FAMILIES[name]
    labels = [] if label is None else [label]
    if name in _SECOND_LABEL:
        labels.append(_SECOND_LABEL[name])
    return GaugeMetricFamily(name, text, labels=labels)


def _label_values(metric: Any) -> list[tuple[str, ...]]:
    # prometheus-client has no public listing of a labelled metric's children.
    with metric._lock:
        return list(metric._metrics.keys())

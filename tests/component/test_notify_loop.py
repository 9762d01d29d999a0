"""Notifications and pings from the daemon's real loop on a fake clock: the scheduler,
runner, events and sender as the daemon wires them, VICIdial's rules in-process, the
deliveries recorded instead of sent. Days in milliseconds."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from refreshd.clock import FakeClock
from refreshd.config import Config, resolve_passwords, validate_config
from refreshd.config.notify import DEFAULT_EVENTS
from refreshd.core.verification import Applied, NotApplied
from refreshd.events import Events
from refreshd.notify import Delivery, Notifications
from refreshd.simulator.rules import SimUser, Vicidial
from tests.support.loop import Log, Loop, at, fleet, http_error, running, users

MONDAY = at("2027-01-04T00:00:00")
DAY = timedelta(days=1)
HOOK = "https://hooks.example.com/services/T0KEN"
PING = "https://hc-ping.com/uuid-east"


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Delivery] = []
        self._lock = threading.Lock()

    def __call__(self, delivery: Delivery, timeout: float) -> None:
        with self._lock:
            self.sent.append(delivery)

    def pings(self, server: str) -> list[str]:
        return [d.event for d in self.sent if d.kind == "ping" and d.name == server]

    def posted(self, event: str) -> list[dict[str, Any]]:
        return [
            json.loads(d.body or b"")
            for d in self.sent
            if d.kind == "notification" and d.event == event
        ]


def _config(servers: list[dict[str, Any]], **tables: Any) -> Config:
    config = fleet(servers, **tables)
    document = config.model_dump(mode="python", exclude_none=True)
    document["notify"] = [{"name": "ops", "url_env": "HOOK"}]
    for server in document["servers"]:
        server["ping_url_env"] = "PING"
    return resolve_passwords(
        validate_config(document, environ={}), environ={"HOOK": HOOK, "PING": PING}, urls=True
    )


@contextmanager
def _notifying(
    config: Config, tmp_path: Path, vicidial: Vicidial | None = None
) -> Iterator[tuple[Loop, Recorder]]:
    recorder = Recorder()
    with running(config, tmp_path, start=MONDAY, vicidial=vicidial) as loop:
        notifications = Notifications(loop.clock, loop.log, loop.metrics, send=recorder)
        loop.runner.events.notifications = notifications
        notifications.configure(config)
        yield loop, recorder
    # Leaving `running` stopped the scheduler, which drained the sender.


def test_each_slot_pings_start_once_and_success_once(tmp_path: Path) -> None:
    config = _config([{"name": "east", "windows": ["02:00-03:00"], "every": "20m"}])
    with _notifying(config, tmp_path) as (loop, recorder):
        loop.run_for(3 * DAY)
    assert len(loop.refreshes()) == 9  # three runs in each of three slots
    assert recorder.pings("east") == ["start", "success"] * 3
    urls = [d.url for d in recorder.sent]
    assert urls == [f"{PING}/start", PING] * 3
    assert recorder.posted("refresh.succeeded") == []  # not among the default events


def test_a_slot_without_success_pings_fail_and_is_notified_once(tmp_path: Path) -> None:
    config = _config(
        [{"name": "east", "windows": ["02:00-03:00"]}],
        backoff={"retry_initial": "5m", "retry_max": "10m"},
    )
    with _notifying(config, tmp_path) as (loop, recorder):
        loop.fault = lambda number: http_error(500)
        loop.run_for(2 * DAY)
    missed = loop.log.matching("slot.missed")
    assert len(missed) == 2
    assert recorder.pings("east") == ["start", "fail"] * 2
    assert [d.url for d in recorder.sent if d.kind == "ping"] == [
        f"{PING}/start",
        f"{PING}/fail",
    ] * 2
    posted = recorder.posted("slot.missed")
    assert [p["slot"] for p in posted] == [
        line["slot"].isoformat().replace("+00:00", "Z") for line in missed
    ]


def test_every_suspension_is_one_post_however_many_calls_fail(tmp_path: Path) -> None:
    vicidial = Vicidial(users(SimUser("noperm", "noperm-123", api_functions=("version",))))
    config = _config(
        [{"name": "east", "windows": ["00:00-24:00"]}],
        credentials={"main": {"user": "noperm", "password": "noperm-123"}},
        backoff={"suspend_initial": "1h", "suspend_max": "8h"},
    )
    with _notifying(config, tmp_path, vicidial) as (loop, recorder):
        loop.run_for(DAY)
    suspended = loop.log.matching("server.suspended")
    assert len(suspended) >= 4
    posted = recorder.posted("server.suspended")
    assert [p["suspensions"] for p in posted] == [line["suspensions"] for line in suspended]
    assert all(p["server"] == "east" and p["outcome"] == "permission_denied" for p in posted)
    # Every event asked for (the default six), once per line logged; and counted.
    told = sum(len(loop.log.matching(event)) for event in DEFAULT_EVENTS)
    assert told == len([d for d in recorder.sent if d.kind == "notification"])
    for event in DEFAULT_EVENTS:
        assert len(recorder.posted(event)) == len(loop.log.matching(event)), event
    sent = loop.metrics.registry.get_sample_value(
        "refreshd_notify_sent_total", {"kind": "notification"}
    )
    assert sent == told


def test_a_reload_that_changes_notify_rebuilds_the_sender_and_one_without_keeps_it(
    tmp_path: Path,
) -> None:
    config = _config([{"name": "east", "windows": ["02:00-03:00"]}])
    with _notifying(config, tmp_path) as (loop, _):
        notifications = loop.runner.events.notifications
        assert notifications is not None
        first = notifications._sender
        loop.scheduler.reload(config)
        assert notifications._sender is first
        document = config.model_dump(mode="python", exclude_none=True)
        document["notify"] = [{"name": "ops", "url": HOOK, "format": "slack"}]
        changed = validate_config(document, environ={})
        loop.scheduler.reload(changed)
        assert notifications._sender is not first
        assert notifications._sinks[0].format == "slack"


def test_only_the_events_a_table_asks_for_are_posted_and_only_scheduled_calls_ping() -> None:
    config = _config([{"name": "east", "windows": ["02:00-03:00"]}])
    document = config.model_dump(mode="python", exclude_none=True)
    document["notify"] = [{"name": "ops", "url": HOOK, "events": ["refresh.failed"]}]
    config = resolve_passwords(
        validate_config(document, environ={}), environ={"PING": PING}, urls=True
    )
    recorder = Recorder()
    notifications = Notifications(FakeClock(MONDAY), None, send=recorder)
    notifications.configure(config)
    slot = MONDAY.replace(hour=2)
    fields = {"server": "east", "slot": slot, "outcome": "ok"}
    notifications.event("refresh.succeeded", "info", {**fields, "trigger": "manual"})
    notifications.event("server.suspended", "warning", {"server": "east"})
    notifications.event("refresh.failed", "error", {**fields, "trigger": "schedule"})
    notifications.event("refresh.succeeded", "info", {**fields, "trigger": "schedule"})
    notifications.event("refresh.succeeded", "info", {**fields, "trigger": "schedule"})
    assert notifications.stop()
    assert [(d.kind, d.event) for d in recorder.sent] == [
        ("notification", "refresh.failed"),
        ("ping", "success"),  # once per slot
    ]


def test_a_verified_refresh_not_applied_is_posted_as_logged() -> None:
    recorder = Recorder()
    config = _config([{"name": "east", "windows": ["02:00-03:00"]}])
    events = Events(Log())
    events.notifications = Notifications(FakeClock(MONDAY), None, send=recorder)
    events.configure(config)
    verdict = NotApplied(seconds=180.0, flagged=(("10.0.0.5", "box5"),), boxes=3)
    events.verified("east", MONDAY, verdict)
    events.verified("east", MONDAY, Applied(seconds=20.0, boxes=3))  # not asked for
    events.close()
    (posted,) = recorder.posted("refresh.not_applied")
    assert posted["flagged"] == [{"server_ip": "10.0.0.5", "server_id": "box5"}]
    assert (posted["applied"], posted["boxes"], posted["level"]) == (2, 3, "error")
    assert len(recorder.sent) == 1

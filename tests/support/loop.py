"""The daemon's loop on a fake clock: the real scheduler, runner, dispatcher and SQLite store,
with VICIdial's pure rules answering in-process, so a simulated week takes milliseconds."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from refreshd.attempt import Target
from refreshd.claiming import Claiming
from refreshd.client import Client
from refreshd.clock import FakeClock
from refreshd.config import Config, validate_config
from refreshd.core.vicidial import Answer, Attempt, Transport, classify, refresh_params
from refreshd.events import Events
from refreshd.metrics import Metrics
from refreshd.runner import Runner, runner_for
from refreshd.scheduler import Scheduler
from refreshd.shared import Engine
from refreshd.simulator.rules import SimUser, Vicidial
from refreshd.store import StateStore

USER = "refreshd"
PASSWORD = "demo-pass-123"
API_URL = "http://vicidial.test/vicidial/non_agent_api.php"
CLIENT_IP = "127.0.0.1"
# A bound on the steps of one run, so a loop that stops advancing fails instead of hanging.
MAX_STEPS = 200_000


class Log:
    """A structlog stand-in that keeps every line as (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _add(self, level: str, event: str, **fields: Any) -> None:
        with self._lock:
            self.lines.append({"level": level, "event": event, **fields})

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._add("exception", event, **fields)

    def matching(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [
                line
                for line in self.lines
                if line["event"] == event and all(line.get(k) == v for k, v in fields.items())
            ]


def fleet(
    servers: list[dict[str, Any]],
    *,
    credentials: dict[str, dict[str, str]] | None = None,
    blackouts: list[dict[str, Any]] | None = None,
    **tables: dict[str, Any],
) -> Config:
    """A validated config: each server a dict with at least name and windows; api_url,
    credentials ("main") and timezone (UTC) filled in. `tables`: daemon, backoff, client."""
    document: dict[str, Any] = {
        "daemon": {"state_path": "/nonexistent/state.db", "metrics_listen": "", "spread": "0s"},
        "credentials": credentials or {"main": {"user": USER, "password": PASSWORD}},
        "servers": [
            {"api_url": API_URL, "credentials": "main", "timezone": "UTC", **s} for s in servers
        ],
    }
    if blackouts:
        document["blackouts"] = blackouts
    for table, values in tables.items():
        document[table] = {**document.get(table, {}), **values}
    return validate_config(document, environ={})


@dataclass
class Call:
    """One request that reached VICIdial (or failed on the way)."""

    at: datetime
    user: str
    server_ip: str | None
    kind: str


# A fault: given the call's number (0 = the first), an answer that replaces VICIdial's,
# or None to let VICIdial answer. `sent` says whether the request reached the PHP first.
Fault = Callable[[int], Answer | None]


@dataclass
class Loop:
    """One daemon's scheduler and runner on `clock`, answering from `vicidial`."""

    config: Config
    store_path: Path | Engine  # a state file, or a shared database's engine
    clock: FakeClock
    vicidial: Vicidial
    log: Log = field(default_factory=Log)
    calls: list[Call] = field(default_factory=list)
    fault: Fault | None = None
    fault_after_login: bool = False
    """With a fault: run the PHP first (the login counts), then lose its answer."""
    metrics: Metrics = field(default_factory=Metrics)
    rng: random.Random | None = None
    """The runner's randomness (the retries' jitter); None: unseeded."""
    hold: Callable[[], None] | None = None
    """Called as each request goes out, before VICIdial sees it (a stalled instance)."""
    claims: Callable[[Events], Claiming] | None = None
    """Makes this loop's claims (one instance of several sharing a store), given its
    events; None: a single daemon without claims."""

    def __post_init__(self) -> None:
        self.store = StateStore(self.store_path)
        self.runner = Runner(
            self.config,
            store=self.store,
            clock=self.clock,
            log=self.log,
            metrics=self.metrics,
            rng=self.rng,
        )
        if self.claims is not None:
            self.runner.claims = self.claims(self.runner.events)
        self.scheduler = Scheduler(
            self.config,
            runner=self.runner,
            clock=self.clock,
            log=self.log,
            metrics=self.metrics,
            send=self._send,
        )
        self._lock = threading.Lock()
        self.client = Client(timeout=1)  # never used: the rules answer in-process
        self.scheduler.prepare()

    def _send(self, client: Client, target: Target) -> Attempt:
        if self.hold is not None:
            self.hold()
        now = self.clock.now()
        with self._lock:
            number = len(self.calls)
            replaced = self.fault(number) if self.fault is not None else None
            fields = refresh_params(target.user, target.password, target.source, target.server_ip)
            if replaced is None or self.fault_after_login:
                php = self.vicidial.answer(fields, CLIENT_IP, now.timestamp())
            kind = php.kind if replaced is None else "fault"
            self.calls.append(Call(now, target.user, target.server_ip, kind))
        if replaced is not None:
            return Attempt(replaced, now, 5)
        answer = classify(php.status, php.body, None, secrets=(target.password,))
        return Attempt(answer, now, 5)

    def run_until(self, end: datetime) -> None:
        """Step the loop as the timing engine would, up to `end` (the clock ends there)."""
        dispatcher = self.scheduler.dispatcher
        for _ in range(MAX_STEPS):
            assert dispatcher.wait_idle(10), "calls still in flight after 10 s"
            at = self.scheduler.next_wake()
            if at is None or at > end:
                self.clock.set(max(end, self.clock.now()))
                return
            if at > self.clock.now():
                self.clock.set(at)
            self.scheduler.run_due()
        raise AssertionError(f"the loop took over {MAX_STEPS} steps: is it stuck?")

    def run_for(self, span: timedelta) -> None:
        self.run_until(self.clock.now() + span)

    def manual_refresh(self, name: str) -> Attempt:
        """What `refreshd refresh NAME` does beside this loop: a runner of its own on the
        same state file calls VICIdial and journals the outcome."""
        with StateStore(self.store_path) as store:  # its own connection, as a process has
            manual = runner_for(self.config, store=store, clock=self.clock, log=Log())
            attempt = self._send(self.client, self.scheduler.target(name))
            manual.settle(manual.call_for(self.config.server(name)), attempt)
        return attempt

    def sync(self) -> None:
        """What the daemon's heartbeat does with another process's journal."""
        self.scheduler.sync_from_store()

    def close(self) -> None:
        self.scheduler.stop(1)
        self.client.close()
        self.store.close()

    def sample(self, name: str, **labels: str) -> float | None:
        """What a scrape of /metrics would show now for `name` with `labels`."""
        return self.metrics.registry.get_sample_value(name, labels)

    def refreshes(self, kind: str = "success") -> list[Call]:
        return [call for call in self.calls if call.kind == kind]


def numbered(count: int, window: str = "00:00-24:00") -> list[dict[str, Any]]:
    """`count` servers s0, s1, ... of one cluster, each with its own server_ip."""
    return [
        {"name": f"s{i}", "server_ip": f"10.0.0.{i}", "windows": [window]} for i in range(count)
    ]


def users(*extra: SimUser) -> list[SimUser]:
    """VICIdial's users: the good refreshd login, and any others."""
    return [SimUser(USER, PASSWORD), *extra]


@contextmanager
def running(
    config: Config,
    tmp_path: Path,
    *,
    start: datetime,
    vicidial: Vicidial | None = None,
    store_name: str = "state.db",
) -> Iterator[Loop]:
    loop = Loop(
        config,
        tmp_path / store_name,
        FakeClock(start),
        vicidial if vicidial is not None else Vicidial(users()),
    )
    try:
        yield loop
    finally:
        loop.close()


def http_error(status: int) -> Answer:
    return classify(status, "<html>error</html>", None)


def timeout_answer() -> Answer:
    return classify(None, None, Transport.TIMEOUT)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)

"""/healthz and the loop heartbeat: 200 while the scheduling loop runs, 503 once it stalls."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from refreshd.attempt import Target
from refreshd.claiming import Claiming
from refreshd.client import Client
from refreshd.clock import FakeClock
from refreshd.config import validate_config
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.daemon import STUCK_MARGIN, Daemon
from refreshd.dispatch import Job
from refreshd.httpd import MetricsServer
from refreshd.metrics import Metrics
from refreshd.runner import Runner
from refreshd.scheduler import Scheduler
from refreshd.shared import sqlite_engine
from refreshd.store import StateStore
from tests.support.instances import Breakable
from tests.support.waiting import eventually, holds_for


def _status(port: int, path: str = "/healthz") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
def scheduler(tmp_path: Path) -> Scheduler:
    config = validate_config(
        {
            "daemon": {"state_path": str(tmp_path / "state.db"), "metrics_listen": ""},
            "credentials": {"c": {"user": "u", "password": "p-1234"}},
            "servers": [
                {
                    "name": "s",
                    "api_url": "http://127.0.0.1:9/vicidial/non_agent_api.php",
                    "credentials": "c",
                    "windows": ["02:00-04:00"],
                }
            ],
        },
        environ={},
    )
    clock = FakeClock(datetime(2027, 1, 5, 12, 0, tzinfo=UTC))
    log = structlog.get_logger()
    runner = Runner(config, store=StateStore(tmp_path / "state.db"), clock=clock, log=log)
    return Scheduler(config, runner=runner, clock=clock, log=log)


def _clock(scheduler: Scheduler) -> FakeClock:
    clock = scheduler.runner.clock
    assert isinstance(clock, FakeClock)
    return clock


def test_the_loop_is_alive_until_its_last_beat_is_too_old(scheduler: Scheduler) -> None:
    clock = _clock(scheduler)
    assert scheduler.loop_alive(30)
    clock.advance(timedelta(seconds=29))
    assert scheduler.loop_alive(30)
    clock.advance(timedelta(seconds=2))
    assert not scheduler.loop_alive(30)


def test_a_beat_run_by_the_timing_engine_revives_the_loop(scheduler: Scheduler) -> None:
    _clock(scheduler).advance(timedelta(seconds=100))
    scheduler.start()
    try:
        scheduler.loop_beat()
        eventually(lambda: scheduler.loop_alive(30), timeout=5, what="the beat")
    finally:
        scheduler.stop(1)


def test_a_stopped_timing_engine_no_longer_beats(scheduler: Scheduler) -> None:
    clock = _clock(scheduler)
    scheduler.start()
    # The control: while the engine runs, a beat revives a loop gone quiet. Without it, a
    # beat that never worked at all would pass this test.
    clock.advance(timedelta(seconds=100))
    assert not scheduler.loop_alive(30)
    asked = time.monotonic()
    scheduler.loop_beat()
    eventually(lambda: scheduler.loop_alive(30), timeout=5, what="the running engine's beat")
    revived_in = time.monotonic() - asked
    scheduler.stop(1)
    clock.advance(timedelta(seconds=100))
    assert not scheduler.loop_alive(30)

    scheduler.loop_beat()  # nobody may run it now

    # Many times as long as the running engine took to beat: room for a beat to show.
    holds_for(
        lambda: not scheduler.loop_alive(30),
        seconds=min(5.0, max(0.5, 20 * revived_in)),
        what="a stopped engine's loop stays quiet",
    )


def test_healthz_answers_200_while_healthy_and_503_once_stalled() -> None:
    healthy = [True]
    server = MetricsServer("127.0.0.1", 0, Metrics().registry, lambda: healthy[0])
    server.start()
    try:
        assert _status(server.port) == 200
        healthy[0] = False
        assert _status(server.port) == 503
        assert _status(server.port, "/metrics") == 200  # metrics still served
    finally:
        server.stop()


def test_healthz_turns_503_once_a_call_outlives_its_deadline_by_the_margin(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    # A call the client's deadline cannot cut (a name lookup, say) holds its login, and
    # with an unproven login every server sharing it: the health check must say so.
    clock = _clock(scheduler)
    release = threading.Event()

    def stuck(client: Client, target: Target) -> Attempt:
        release.wait(10)
        return Attempt(Answer(Outcome.OK, "late"), clock.now(), 1)

    scheduler.dispatcher._send = stuck
    daemon = Daemon(tmp_path / "unused.toml", environ={}, clock=clock)
    daemon.scheduler = scheduler
    timeout = scheduler.config.client.timeout.total_seconds()
    scheduler.prepare()
    name = scheduler.config.servers[0].name
    job = Job(name, "u", "pw", scheduler.target(name), lambda attempt: None, print)
    try:
        assert daemon.healthy()
        assert scheduler.dispatcher.submit(job)
        eventually(lambda: scheduler.dispatcher.in_flight == 1, timeout=5, what="the call")
        clock.advance(timedelta(seconds=timeout + STUCK_MARGIN))
        assert daemon.healthy()  # at the margin: still within it
        clock.advance(timedelta(seconds=1))
        assert scheduler.loop_alive(3 * daemon.heartbeat)  # the loop is fine ...
        assert not daemon.healthy()  # ... but a call is stuck
    finally:
        release.set()
        scheduler.stop(1)


def test_healthz_turns_503_once_claims_went_unrenewed_for_a_lease_and_200_once_back(
    scheduler: Scheduler, tmp_path: Path
) -> None:
    clock = _clock(scheduler)
    lease = timedelta(seconds=15)
    engine = Breakable(sqlite_engine(tmp_path / "state.db", clock))
    claims = Claiming(engine, "web-1", lease, clock=clock, events=scheduler.runner.events)
    scheduler.runner.claims = claims
    daemon = Daemon(tmp_path / "unused.toml", environ={}, clock=clock)
    daemon.scheduler = scheduler
    server = MetricsServer("127.0.0.1", 0, Metrics().registry, daemon.healthy)
    server.start()
    try:
        assert claims.renew() is not None
        engine.broken = True  # the claims store unreachable
        clock.advance(lease)
        assert claims.renew() is None
        assert scheduler.loop_alive(3 * daemon.heartbeat)  # the loop is fine (16 s) ...
        assert _status(server.port) == 200  # a lease, not more: still healthy
        clock.advance(timedelta(seconds=1))
        assert _status(server.port) == 503  # ... the claims are not
        engine.broken = False
        assert claims.renew() is not None  # back, without a restart
        assert _status(server.port) == 200
    finally:
        server.stop()
        scheduler.stop(1)
        engine.close()

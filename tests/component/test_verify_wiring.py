"""The daemon's verified refreshes in-process (verify/watch.py) against a real MariaDB: which
calls are verified, and what a reload keeps or rebuilds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from refreshd.clock import system_clock
from refreshd.config import Config, resolve_passwords, validate_config
from refreshd.core.ledger import Call
from refreshd.core.verification import Applied, Verdict
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.simulator import SimServer, Simulator, SimUser
from refreshd.verify import DatabaseUrl
from refreshd.verify.watch import Verification
from tests.support.databases import verified_cluster
from tests.support.simulator import refresh_directly
from tests.support.waiting import eventually

PASSWORD = "api-pass-123"
DB_PASSWORD = "ro-pass-4567"
BOXES = [SimServer("10.0.0.11", server_id="dial1"), SimServer("10.0.0.12", server_id="dial2")]


@pytest.fixture
def cluster() -> Iterator[tuple[Simulator, DatabaseUrl]]:
    with verified_cluster(
        BOXES, DB_PASSWORD, users=[SimUser("api", PASSWORD)], keepalive_interval=0.2
    ) as found:
        yield found


def config(url: DatabaseUrl, db_password: str, **server: Any) -> Config:
    data = {
        "credentials": {"main": {"user": "api", "password": PASSWORD}},
        "databases": {"east": {"url": str(url), "password_env": "DB_PW"}},
        "servers": [
            {
                "name": name,
                "api_url": "http://127.0.0.1:9/vicidial/non_agent_api.php",
                "credentials": "main",
                "windows": ["02:00-04:00"],
                **({"database": "east"} if name == "east" else {}),
            }
            for name in ("east", "plain")
        ],
    }
    environ = {"DB_PW": db_password}
    return resolve_passwords(validate_config(data, environ=environ), environ=environ)


class Verdicts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, Verdict]] = []

    def record(self, server: str, started: datetime, verdict: Verdict) -> None:
        with self.lock:
            self.seen.append((server, verdict))


def refreshed(sim: Simulator, verification: Verification, server: str = "east") -> None:
    """A real refresh of the simulator, then the runner's report of it (an `ok`)."""
    started = system_clock.now()
    refresh_directly(sim, "api", PASSWORD)
    attempt = Attempt(Answer(Outcome.OK, "SUCCESS"), started, 5)
    verification.after_call(Call(server=server, login="api", credentials="main"), attempt)


def test_only_an_ok_of_a_server_with_a_database_is_verified(
    cluster: tuple[Simulator, DatabaseUrl],
) -> None:
    sim, url = cluster
    verdicts = Verdicts()
    verification = Verification(system_clock, verdicts.record, interval=0.2)
    verification.configure(config(url, DB_PASSWORD))
    try:
        failed = Attempt(Answer(Outcome.TRANSIENT, "timed out"), system_clock.now(), 5)
        verification.after_call(Call(server="east", login="api", credentials="main"), failed)
        refreshed(sim, verification, server="plain")
        assert verification.pending() == []

        refreshed(sim, verification)
        eventually(lambda: bool(verdicts.seen), what="a verdict", timeout=10)
    finally:
        verification.stop()
    ((server, verdict),) = verdicts.seen
    assert server == "east"
    assert isinstance(verdict, Applied)
    assert verdict.boxes == 2


def test_a_reload_keeps_what_waits_and_a_new_password_takes_effect(
    cluster: tuple[Simulator, DatabaseUrl],
) -> None:
    sim, url = cluster
    verdicts = Verdicts()
    verification = Verification(system_clock, verdicts.record, interval=0.2)
    verification.configure(config(url, "wrong-password"))
    try:
        sim.set_keepalive("10.0.0.12", alive=False)
        refreshed(sim, verification)
        verification.configure(config(url, "wrong-password"))  # nothing changed
        assert verification.pending() == ["east"]

        verification.configure(config(url, DB_PASSWORD))  # the password fixed: rebuilt
        assert verification.pending() == []
        sim.set_keepalive("10.0.0.12", alive=True)
        refreshed(sim, verification)
        eventually(lambda: bool(verdicts.seen), what="a verdict", timeout=10)
    finally:
        verification.stop()
    assert [server for server, _ in verdicts.seen] == ["east"]
    assert isinstance(verdicts.seen[0][1], Applied)


def test_a_refresh_whose_verdict_will_never_come_is_said_so_at_stop(
    cluster: tuple[Simulator, DatabaseUrl],
) -> None:
    sim, url = cluster
    sim.set_keepalive("10.0.0.12", alive=False)  # the verdict would wait the full timeout
    dropped: list[dict[str, Any]] = []
    verdicts = Verdicts()
    verification = Verification(
        system_clock, verdicts.record, dropped=lambda **fields: dropped.append(fields)
    )
    verification.configure(config(url, DB_PASSWORD))
    refreshed(sim, verification)
    assert verification.pending() == ["east"]

    verification.stop()

    assert dropped == [{"servers": ["east"], "why": "the daemon stopped before the verdict"}]
    assert verdicts.seen == []

"""The daemon and the commands on a shared store (`[state]`, real PostgreSQL and MariaDB): a
second daemon is allowed there (on SQLite it is refused: test_daemon.py), no SQLite file or
lock is made, `refresh` journals into the database, `history` and `status` read it back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refreshd.dburl import DatabaseUrl
from refreshd.simulator import Simulator
from tests.support.config import GOOD_PASSWORD, GOOD_USER, write_daemon_config
from tests.support.daemon import StartDaemon, run_refreshd
from tests.support.databases import scratch_database
from tests.support.simulator import api_path, total_requests


def quiet_day() -> str:
    """A weekday three days from now: its window neither runs nor is caught up in a test."""
    return (datetime.now(UTC) + timedelta(days=3)).strftime("%a").lower()


@pytest.fixture(params=["postgresql", "mysql"])
def database(request: pytest.FixtureRequest) -> Iterator[DatabaseUrl]:
    with scratch_database(request.param, prefix="refreshd_shared") as url:
        yield url


def test_two_daemons_share_a_store_and_see_a_manual_refresh(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon, database: DatabaseUrl
) -> None:
    config = write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[
            {
                "name": "s00",
                "api_url": simulator.url + api_path(0),
                "credentials": "main",
                "windows": [f"{quiet_day()} 03:00-03:01"],  # no run while the test lasts
            }
        ],
        credentials={"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        daemon={"state_path": str(tmp_path / "unused" / "state.db"), "metrics_listen": ""},
        client={"timeout": "3s"},
        state={"url": str(database), "instance": "web-1"},
    )
    first = start_daemon(config)
    first.wait_for("daemon.started", timeout=20)
    second = start_daemon(config)
    second.wait_for("daemon.started", timeout=20)
    assert first.alive()
    assert second.alive()
    assert not (tmp_path / "unused").exists()  # no SQLite file, no lock file

    before = total_requests(simulator)
    done = run_refreshd("refresh", "-c", config, "s00", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert total_requests(simulator) == before + 1

    history = run_refreshd("history", "-c", config, "--json", cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    rows = [json.loads(line) for line in history.stdout.splitlines()]
    assert [(r["server"], r["outcome"]) for r in rows] == [("s00", "ok")]

    status = run_refreshd("status", "-c", config, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    (entry,) = document["servers"]
    assert entry["last_outcome"] == "ok"
    assert document["daemon"]["heartbeat"] is not None  # the daemons beat into the database
    assert GOOD_PASSWORD not in done.stdout + done.stderr + history.stdout + status.stdout

"""The daemon and the commands on a shared store (`[state]`, real PostgreSQL and MariaDB): a
second daemon is allowed there (on SQLite it is refused: test_daemon.py), no SQLite file or
lock is made, `refresh` journals into the database, `history` and `status` read it back."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refreshd.clock import system_clock
from refreshd.core.ledger import login_key
from refreshd.dburl import DatabaseUrl
from refreshd.shared import connect
from refreshd.simulator import Simulator
from refreshd.tickets import Ticket, claim_run
from tests.support.config import GOOD_PASSWORD, GOOD_USER, write_daemon_config
from tests.support.daemon import RunRefreshd, StartDaemon, run_refreshd
from tests.support.databases import scratch_database
from tests.support.fleet import WRONG_PASSWORD
from tests.support.instances import One
from tests.support.simulator import api_path, total_requests


def quiet_day() -> str:
    """A weekday three days from now: its window neither runs nor is caught up in a test."""
    return (datetime.now(UTC) + timedelta(days=3)).strftime("%a").lower()


@pytest.fixture(params=["postgresql", "mysql"])
def database(request: pytest.FixtureRequest) -> Iterator[DatabaseUrl]:
    with scratch_database(request.param, prefix="refreshd_shared") as url:
        yield url


def shared_config(
    tmp_path: Path,
    simulator: Simulator,
    database: DatabaseUrl | None,
    *,
    password: dict[str, str] | None = None,
    **state: str,
) -> Path:
    """One server, s00, on the simulator (never due while a test lasts), its store the
    shared `database` (None: a state file, tmp_path/state.db); the good login, unless
    `password` says where another is."""
    if database is None:
        state_path, shared = tmp_path / "state.db", None
    else:
        state_path = tmp_path / "unused" / "state.db"
        shared = {"url": str(database), "instance": "web-1", **state}
    return write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[
            {
                "name": "s00",
                "api_url": simulator.url + api_path(0),
                "credentials": "main",
                "windows": [f"{quiet_day()} 03:00-03:01"],  # no run while the test lasts
            }
        ],
        credentials={"main": {"user": GOOD_USER, **(password or {"password": GOOD_PASSWORD})}},
        daemon={"state_path": str(state_path), "metrics_listen": ""},
        client={"timeout": "3s"},
        state=shared,
    )


def test_two_daemons_share_a_store_and_see_a_manual_refresh(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon, database: DatabaseUrl
) -> None:
    config = shared_config(tmp_path, simulator, database)
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


@pytest.mark.parametrize(
    ("command", "held"),
    [
        ("refresh s00", "login lease"),
        ("refresh s00", "run called"),
        ("check --online", "login lease"),
    ],
)
def test_a_manual_command_waits_while_another_instance_tries_the_login_or_calls_the_run(
    tmp_path: Path,
    simulator: Simulator,
    run_cli: RunRefreshd,
    database: DatabaseUrl,
    command: str,
    held: str,
) -> None:
    # Another instance (web-2) is trying the unproven login, or has its call for s00's run
    # out: the manual command sends nothing until that has ended, then goes on.
    config = shared_config(tmp_path, simulator, database, lease="5s")
    other = One(connect(database, None), "web-2", system_clock, timedelta(seconds=5)).claims
    ticket = Ticket("s00", datetime(2026, 11, 30, 3, tzinfo=UTC), other)
    if held == "login lease":
        assert other.hold_login(login_key(GOOD_USER)) is None
    else:
        assert claim_run(ticket) is None
    sent_meanwhile: list[int] = []

    def ended() -> None:
        sent_meanwhile.append(total_requests(simulator))
        if ticket.claim is None:
            other.free_login(login_key(GOOD_USER))
        else:
            other.finish(ticket.claim, "ok")

    answer = threading.Timer(0.5, ended)
    answer.start()
    verb, argument = command.split()
    try:
        code, out, err = run_cli([verb, "-c", config, argument])
    finally:
        answer.join()
        other.engine.close()

    assert sent_meanwhile == [0]
    assert code == 0, out + err
    assert total_requests(simulator) == (1 if verb == "refresh" else 2)  # check: and reach


@pytest.mark.parametrize("engine", ["sqlite", "postgresql", "mysql"])
def test_concurrent_manual_refreshes_with_a_wrong_password_cost_one_failed_login(
    tmp_path: Path, simulator: Simulator, engine: str
) -> None:
    # Each answer takes a second: the four runs overlap, and each read the journal before
    # any refusal was in it. One tries the login under the login's lease (in the shared
    # database, or in the state file); the others wait for it, then read its refusal.
    with contextlib.ExitStack() as stack:
        database = None
        if engine != "sqlite":
            database = stack.enter_context(scratch_database(engine, prefix="refreshd_shared"))
        _four_manual_refreshes_with_a_wrong_password(tmp_path, simulator, database)


def _four_manual_refreshes_with_a_wrong_password(
    tmp_path: Path, simulator: Simulator, database: DatabaseUrl | None
) -> None:
    config = shared_config(tmp_path, simulator, database, password={"password_env": "PW"})
    simulator.set_fault("latency", latency=1.0)

    def manual(_: int) -> subprocess.CompletedProcess[str]:
        return run_refreshd("refresh", "-c", config, "s00", env=wrong, cwd=tmp_path)

    wrong = {"PW": WRONG_PASSWORD}
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(manual, range(4)))

    assert simulator.stats()["logins"]["failed"] == 1
    assert [run.returncode for run in runs] == [1] * 4
    assert all(WRONG_PASSWORD not in run.stdout + run.stderr for run in runs)

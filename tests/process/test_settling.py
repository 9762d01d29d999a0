"""Settling a lost answer, end to end (issue 14, item 5): a real `refreshd run` is killed -9
while its call is in flight, then started again on the same state file. The simulator mirrors
its rows into a real MariaDB, where a refresh sets `system_settings.reload_timestamp = NOW()`
as VICIdial does. When the killed call reached the PHP, the restarted daemon finds the stamp
since the call's start and records the run done (`refresh.settled`) with no second call; when
it did not, the stamp says no and the call is made again (at-least-once)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from refreshd.simulator import API_PATH, Simulator
from refreshd.verify import DatabaseUrl
from tests.support.daemon import RunRefreshd, StartDaemon
from tests.support.databases import DB_ENV, DB_PASSWORD, verified_config
from tests.support.waiting import eventually, holds_for


def _refreshes(sim: Simulator) -> list[dict[str, Any]]:
    """The calls whose PHP ran a refresh (VICIdial took it)."""
    return [c for c in sim.calls() if c["stage"] == "REFRESH" and c["answer_kind"] == "success"]


def _requests(sim: Simulator) -> int:
    return int(sim.stats()["requests"].get(API_PATH, 0))


def _killed_in_flight(
    tmp_path: Path, cluster: tuple[Simulator, DatabaseUrl], start: StartDaemon, taken: int
) -> tuple[Path, Any]:
    """A daemon killed -9 while its call is out (after the simulator counted `taken` refreshes),
    then a second one started on the same state file: the config and the second daemon."""
    sim, database = cluster
    config = verified_config(tmp_path, sim, database)
    env = DB_ENV
    first = start(config, env=env)
    eventually(lambda: sim.stats()["in_flight"] >= 1, what="the call on the wire")
    eventually(lambda: len(_refreshes(sim)) == taken, what=f"{taken} refresh(es) taken")
    first.kill()
    return config, start(config, env=env)


def test_a_call_killed_after_vicidial_took_it_is_settled_after_restart_without_a_second_call(
    tmp_path: Path,
    cluster: tuple[Simulator, DatabaseUrl],
    start_daemon: StartDaemon,
    run_cli: RunRefreshd,
) -> None:
    sim, _ = cluster
    # The PHP runs (the refresh is taken, the stamp set), then the answer waits: the daemon is
    # killed before it hears it.
    sim.set_fault("slow_after_login", path=API_PATH, delay=20.0, count=1)
    config, second = _killed_in_flight(tmp_path, cluster, start_daemon, taken=1)
    restarted = time.monotonic()
    stamped = _refreshes(sim)[0]["t"]

    (line,) = second.wait_for("refresh.settled", server="east", timeout=30)
    settled_after = time.monotonic() - restarted
    second.wait_for("refresh.applied", server="east", timeout=30)
    holds_for(lambda: _requests(sim) == 1, seconds=1.5, what="no second call for the run")

    assert len(_refreshes(sim)) == 1
    assert second.matching("refresh.succeeded") == []
    assert second.matching("claim.taken_over", server="east", maybe_called=True)
    assert _epoch(line["reload_timestamp"]) >= int(_epoch(line["started"]))
    assert abs(_epoch(line["reload_timestamp"]) - int(stamped)) <= 1
    code, rows, err = run_cli(["history", "--json", "-c", config, "--server", "east"])
    assert code == 0, err
    (row,) = [json.loads(text) for text in rows.splitlines()]
    assert row["outcome"] == "settled"
    assert DB_PASSWORD not in second.stdout + second.stderr
    print(
        f"FIGURE settled {settled_after:.1f}s after the restart: stamp "
        f"{line['reload_timestamp']}, lost call {line['started']}"
    )


def test_a_call_killed_before_vicidial_took_it_is_made_again_after_restart(
    tmp_path: Path, cluster: tuple[Simulator, DatabaseUrl], start_daemon: StartDaemon
) -> None:
    sim, _ = cluster
    # The request waits before the PHP: killed then, VICIdial never took it; the stamp stays
    # before the call's start (none at all here), and the database says so.
    sim.set_fault("latency", path=API_PATH, latency=20.0, count=1)
    _, second = _killed_in_flight(tmp_path, cluster, start_daemon, taken=0)

    (told,) = second.wait_for("refresh.not_settled", server="east", timeout=30)
    second.wait_for("refresh.succeeded", server="east", timeout=30)

    assert "no refresh taken since the call started" in told["why"]
    assert len(_refreshes(sim)) == 1  # the call made again: the one refresh
    assert _requests(sim) == 2
    assert second.matching("refresh.settled") == []
    assert DB_PASSWORD not in second.stdout + second.stderr


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

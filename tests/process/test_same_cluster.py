"""Same cluster twice, end to end: two `[[servers]]` entries for one VICIdial cluster (two web
server addresses, two `[databases]` tables naming its database differently) make one call per
slot from a real `refreshd run`, counted by the simulator, and `check --online` warns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from refreshd.simulator import API_PATH, Simulator
from refreshd.verify import DatabaseUrl
from tests.support.config import GOOD_PASSWORD, GOOD_USER, window_from_now, write_daemon_config
from tests.support.daemon import RunRefreshd, StartDaemon
from tests.support.databases import DB_PASSWORD, good_cluster
from tests.support.simulator import refresh_directly

SLOTS = 4


@pytest.fixture
def cluster() -> Iterator[tuple[Simulator, DatabaseUrl]]:
    with good_cluster() as found:
        # An administrator's refresh some time ago: the last reload that tells this cluster
        # from a clone with the same servers rows (core/clusters.py).
        sim, _ = found
        refresh_directly(sim, GOOD_USER, GOOD_PASSWORD, source="admin")
        yield found


def _config(tmp_path: Path, sim: Simulator, database: DatabaseUrl) -> Path:
    """east-a and east-b: one cluster, each entry naming its own box (server_ip) and its own
    [databases] table, the second reaching the same MariaDB as "localhost"."""
    window = window_from_now(0, 600)
    return write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[
            {
                "name": name,
                "api_url": sim.url + API_PATH,
                "credentials": "main",
                "windows": [window],
                "every": "2s",
                "server_ip": server_ip,
                "database": table,
            }
            for name, server_ip, table in (
                ("east-a", "10.0.0.11", "east"),
                ("east-b", "10.0.0.12", "east-local"),
            )
        ],
        credentials={"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        databases={
            "east": {"url": str(database), "password_env": "EAST_DB_PASSWORD"},
            "east-local": {
                "url": str(replace(database, host="localhost")),
                "password_env": "EAST_DB_PASSWORD",
            },
        },
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": ""},
    )


def _refreshes(sim: Simulator) -> list[dict[str, object]]:
    """refreshd's refresh calls: the administrator's, the first, left out."""
    return [call for call in sim.calls() if call["stage"] == "REFRESH"][1:]


def test_two_entries_of_one_cluster_make_one_call_per_slot(
    tmp_path: Path,
    cluster: tuple[Simulator, DatabaseUrl],
    start_daemon: StartDaemon,
    run_refreshd: RunRefreshd,
) -> None:
    sim, database = cluster
    config = _config(tmp_path, sim, database)
    daemon = start_daemon(config, env={"EAST_DB_PASSWORD": DB_PASSWORD})

    (same,) = daemon.wait_for("cluster.same")
    assert same["servers"] == ["east-a", "east-b"]
    # Two hosts (127.0.0.1, localhost): recognised from what the database says.
    assert "same 4 servers rows" in same["why"]
    daemon.wait_for("refresh.succeeded", server="east-a", count=SLOTS, timeout=30)
    daemon.wait_for("refresh.succeeded", server="east-b", count=SLOTS, timeout=30)
    daemon.stop()

    calls = _refreshes(sim)
    runs = {
        name: daemon.matching("refresh.succeeded", server=name) for name in ("east-a", "east-b")
    }
    # One call per slot, and each entry's run done with it.
    told = (
        [(call["t"], call["server_ip"]) for call in calls],
        {
            name: [(r["timestamp"], r.get("due", r["slot"])) for r in rs]
            for name, rs in runs.items()
        },
        daemon.stdout[-6000:],
    )
    assert len(calls) == len(runs["east-a"]) == len(runs["east-b"]), told
    assert len(calls) >= SLOTS
    assert len({call["server_ip"] for call in calls}) == 1  # the first entry's request
    print(f"FIGURE {len(calls)} calls for {len(calls)} slots of 2 entries of one cluster")
    assert DB_PASSWORD not in daemon.stdout + daemon.stderr

    # Each entry's history has every run.
    for name in ("east-a", "east-b"):
        code, rows, err = run_refreshd(["history", "--json", "-c", config, "--server", name])
        assert code == 0, err
        outcomes = [json.loads(line)["outcome"] for line in rows.splitlines()]
        assert outcomes.count("ok") == len(calls)


def test_check_online_warns_naming_both_entries_and_why(
    tmp_path: Path, cluster: tuple[Simulator, DatabaseUrl], run_refreshd: RunRefreshd
) -> None:
    sim, database = cluster
    config = _config(tmp_path, sim, database)
    code, out, err = run_refreshd(
        ["check", "--online", "-c", config], env={"EAST_DB_PASSWORD": DB_PASSWORD}
    )

    assert code == 0, out + err
    (line,) = [text for text in out.splitlines() if text.startswith("WARN")]
    assert "cluster east-a, east-b" in line
    assert "one VICIdial cluster (their databases list the same 4 servers rows" in line
    assert "one call per slot" in line
    assert out.rstrip().endswith("1 warning(s)")
    assert _refreshes(sim) == []  # check never refreshes
    assert DB_PASSWORD not in out + err

"""Verified refreshes, end to end: a real `refreshd run` refreshes the simulator, whose
telephony servers (mirrored into a real MariaDB, each with a keepalive every second) clear
their rebuild flag, or not; the daemon reads the database as a read-only user and says
`refresh.applied` or `refresh.not_applied`, in the log, the metrics and the state file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from refreshd.simulator import Simulator
from refreshd.verify import DatabaseUrl
from tests.support.alerts import alert, expect, input_series, promtool, run_promtool, scrape
from tests.support.daemon import RunRefreshd, StartDaemon
from tests.support.databases import (
    DB_ENV,
    DB_PASSWORD,
    database_user,
    telephony_boxes,
    verified_config,
)
from tests.support.waiting import eventually

VERIFY_TIMEOUT = 10.0  # seconds: the least verify_timeout allows
BOXES = telephony_boxes()


def _metric(port: int, name: str, **labels: str) -> float | None:
    samples = scrape(port).samples or {}
    return samples.get((name, tuple(sorted(labels.items()))))


def _start(tmp_path: Path, cluster: tuple[Simulator, DatabaseUrl], start: StartDaemon) -> Any:
    sim, database = cluster
    config = verified_config(tmp_path, sim, database, verify_timeout=f"{VERIFY_TIMEOUT:.0f}s")
    return start(config, env=DB_ENV)


def _shown(tmp_path: Path, run: RunRefreshd) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """`status` as text, then as JSON (the server's entry), and the newest `history` row."""
    config = tmp_path / "refreshd.toml"
    code, text, err = run(["status", "-c", config])
    assert code == 0, err
    code, document, err = run(["status", "--json", "-c", config])
    assert code == 0, err
    code, rows, err = run(["history", "--json", "-c", config, "--server", "east"])
    assert code == 0, err
    (entry,) = json.loads(document)["servers"]
    return text, entry, json.loads(rows.splitlines()[0])


def test_a_box_whose_keepalive_is_dead_is_named_and_the_others_counted(
    tmp_path: Path,
    cluster: tuple[Simulator, DatabaseUrl],
    start_daemon: StartDaemon,
    run_cli: RunRefreshd,
) -> None:
    sim, _ = cluster
    sim.set_keepalive("10.0.0.12", alive=False)
    daemon = _start(tmp_path, cluster, start_daemon)
    port = daemon.metrics_port()
    daemon.wait_for("refresh.succeeded", server="east")
    succeeded_at = time.monotonic()

    (line,) = daemon.wait_for("refresh.not_applied", server="east", timeout=VERIFY_TIMEOUT + 20)
    waited = time.monotonic() - succeeded_at

    assert line["flagged"] == [{"server_ip": "10.0.0.12", "server_id": "dial2"}]
    assert (line["boxes"], line["applied"]) == (3, 2)
    assert VERIFY_TIMEOUT <= line["seconds"] < VERIFY_TIMEOUT + 10  # polled, not at once
    scraped = scrape(port)
    assert scraped.value("refreshd_unapplied_servers", server="east") == 1
    assert daemon.matching("refresh.applied") == []
    print(f"FIGURE not_applied told {waited:.1f}s after the success line, {line['seconds']}s")
    assert DB_PASSWORD not in daemon.stdout + daemon.stderr

    text, entry, row = _shown(tmp_path, run_cli)
    assert entry["verified"]["applied"] is False
    assert entry["verified"]["detail"] == "still flagged: dial2 (10.0.0.12)"
    assert row["outcome"] == "ok"
    assert row["verified"] == entry["verified"]
    assert "NO (10s)" in text

    # The shipped alert fires on that series (and no other alert does).
    promtool()
    series = input_series([scraped], hold=60)
    firing = [alert("RefreshdRefreshNotApplied", server="east")]
    run_promtool(
        tmp_path,
        [
            {
                "input_series": series,
                "alert_rule_test": expect("30m", {"RefreshdRefreshNotApplied": firing}),
            }
        ],
    )


def test_a_refresh_every_box_applies_is_logged_with_its_seconds_and_counted(
    tmp_path: Path,
    cluster: tuple[Simulator, DatabaseUrl],
    start_daemon: StartDaemon,
    run_cli: RunRefreshd,
) -> None:
    daemon = _start(tmp_path, cluster, start_daemon)
    port = daemon.metrics_port()

    (line,) = daemon.wait_for("refresh.applied", server="east", timeout=VERIFY_TIMEOUT + 5)

    assert line["boxes"] == 3
    assert 0 < line["seconds"] < VERIFY_TIMEOUT
    # events.py logs the line, then sets the metrics: a scrape may fall in between.
    eventually(
        lambda: _metric(port, "refreshd_refresh_apply_seconds_count") == 1,
        timeout=5,
        what="the applied refresh counted in /metrics",
    )
    assert _metric(port, "refreshd_unapplied_servers", server="east") == 0
    applied_at = _metric(port, "refreshd_last_applied_timestamp_seconds", server="east")
    assert applied_at is not None
    assert abs(applied_at - time.time()) < 60
    assert daemon.matching("refresh.not_applied") == []
    print(f"FIGURE applied {line['seconds']}s after the call (keepalive every 1 s)")
    assert DB_PASSWORD not in daemon.stdout + daemon.stderr

    text, entry, row = _shown(tmp_path, run_cli)
    assert entry["verified"]["applied"] is True
    assert entry["verified"]["seconds"] == line["seconds"]
    assert row["verified"] == entry["verified"]
    assert f"yes ({line['seconds']:.0f}s)" in text


def _check_online(
    tmp_path: Path, sim: Simulator, database: DatabaseUrl, password: str, run: RunRefreshd
) -> tuple[int, str, str]:
    config = verified_config(tmp_path, sim, database, verify_timeout=f"{VERIFY_TIMEOUT:.0f}s")
    return run(["check", "--online", "-c", config], env={"EAST_DB_PASSWORD": password})


def test_check_online_counts_the_telephony_servers_it_would_verify(
    tmp_path: Path, cluster: tuple[Simulator, DatabaseUrl], run_cli: RunRefreshd
) -> None:
    sim, database = cluster
    code, out, err = _check_online(tmp_path, sim, database, DB_PASSWORD, run_cli)

    assert code == 0, out + err
    (line,) = [text for text in out.splitlines() if "database east" in text]
    assert line.startswith("ok")
    assert "3 telephony server(s) to verify (dial1, dial2, dial3), 0 still flagged" in line
    assert [call for call in sim.calls() if call["stage"] == "REFRESH"] == []  # no refresh
    assert DB_PASSWORD not in out + err


@pytest.mark.parametrize("problem", ["no grant on system_settings", "a wrong password"])
def test_check_online_fails_naming_the_grant_or_the_password(
    tmp_path: Path,
    cluster: tuple[Simulator, DatabaseUrl],
    run_cli: RunRefreshd,
    problem: str,
) -> None:
    sim, full = cluster
    grants = [f"SELECT ON `{full.database}`.servers"]
    with database_user(grants, DB_PASSWORD) as user:
        partial = DatabaseUrl(user, full.host, full.port, full.database)
        if problem == "a wrong password":
            code, out, err = _check_online(tmp_path, sim, full, "wrong-Pass_99", run_cli)
        else:
            code, out, err = _check_online(tmp_path, sim, partial, DB_PASSWORD, run_cli)

    assert code == 1, out + err
    (line,) = [text for text in out.splitlines() if "database east" in text]
    assert line.startswith("FAIL")
    if problem == "a wrong password":
        assert "access denied" in line
        assert "wrong password" in line
    else:
        assert f"GRANT SELECT ON {full.database}.servers and SELECT ON " in line
        assert f"{full.database}.system_settings TO '{user}'" in line
    assert DB_PASSWORD not in out + err
    assert "wrong-Pass_99" not in out + err

"""Every wait the login gate applies is shown with its real reason by the commands and the
metrics a person meets: a real daemon against a VICIdial web server that answers 500 (no
readable answer: each call may have been a failed login) spends the failed-login budget,
and `status`, `refresh`, `refresh --force` and /metrics all say so, never "a refused
login"."""

from __future__ import annotations

import json
from pathlib import Path

from refreshd.simulator import Simulator
from tests.support.alerts import scrape
from tests.support.config import GOOD_PASSWORD, GOOD_USER, window_from_now, write_daemon_config
from tests.support.daemon import EXIT_OK, RunRefreshd, StartDaemon
from tests.support.simulator import api_path

REASONS = ("refused_login", "locked_out", "failed_login_budget")


def test_a_spent_failed_login_budget_is_shown_as_such_by_status_refresh_and_metrics(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon, run_cli: RunRefreshd
) -> None:
    simulator.set_fault("http500", path=api_path(0))
    config = write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[
            {
                "name": "east-1",
                "api_url": simulator.url + api_path(0),
                "credentials": "main",
                "windows": [window_from_now(-2, 3600)],
            }
        ],
        credentials={"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": "127.0.0.1:0"},
        backoff={"retry_initial": "1s", "retry_max": "1s"},
    )
    daemon = start_daemon(config)
    (paused,) = daemon.wait_for("credentials.suspended", credentials="main")
    metrics = scrape(daemon.metrics_port())

    code, out, err = run_cli(["status", "-c", config, "--json"])
    assert code == EXIT_OK, err
    (shown,) = json.loads(out)["servers"]
    _, table, _ = run_cli(["status", "-c", config])
    refused, said_out, said = run_cli(["refresh", "-c", config, "east-1"])
    forced, forced_out, forced_said = run_cli(["refresh", "-c", config, "east-1", "--force"])
    calls = simulator.stats()["requests"].get(api_path(0))

    assert paused["wait"] == "failed_login_budget"
    assert {
        reason: metrics.value("refreshd_credentials_waiting", credentials="main", reason=reason)
        for reason in REASONS
    } == {"refused_login": 0, "locked_out": 0, "failed_login_budget": 1}
    assert shown["credentials_wait_kind"] == "failed_login_budget"
    assert shown["credentials_wait_until"] == paused["suspended_until"]
    assert "no readable answer" in shown["credentials_wait_reason"]
    assert shown["next_run"] >= paused["suspended_until"]  # not "now": the gate holds it
    assert "failed-login budget spent: logins paused until" in table
    assert refused != EXIT_OK
    assert forced != EXIT_OK
    assert "--force does not lift it" in said
    for text in (said_out + said, forced_out + forced_said):
        assert "no readable answer" in text, text
        assert "refused login" not in text, text
    assert calls == 3  # neither command logged in: the budget holds even with --force
    every = [out, table, said_out, said, forced_out, forced_said, metrics.text]
    assert not [text for text in every if GOOD_PASSWORD in text]

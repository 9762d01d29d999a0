"""The alert rules shipped in deploy/prometheus/ fire on what a real daemon's /metrics shows,
judged by `promtool test rules`; and the state gauges behind them survive a restart.

A real `refreshd run` against the simulator is brought into each state an alert is for
(a success, daily and weekly, a suspension, a credentials wait, a spent failed-login budget,
a missed slot, nothing planned, a call in flight, then stopped); its scrapes become
promtool's input series, held unchanged for the hours (or the week) the rules look at.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from refreshd.simulator import Simulator
from tests.support.alerts import Scrape, alert, expect, input_series, promtool, run_promtool, scrape
from tests.support.config import (
    GOOD_PASSWORD,
    GOOD_USER,
    NOAPI_PASSWORD,
    NOAPI_USER,
    window_from_now,
    write_daemon_config,
)
from tests.support.daemon import EXIT_OK, StartDaemon
from tests.support.simulator import api_path
from tests.support.waiting import eventually

GHOST_USER, GHOST_PASSWORD = "ghost", "ghost-pass-404"  # unknown to VICIdial: "Login incorrect"
# Its web server answers 500 only: the failed-login budget is spent, no login was refused.
OUTAGE_USER, OUTAGE_PASSWORD = "outage", "outage-pass-500"
CREDENTIALS = {
    "main": {"user": GOOD_USER, "password": GOOD_PASSWORD},
    "noapi": {"user": NOAPI_USER, "password": NOAPI_PASSWORD},
    "ghost": {"user": GHOST_USER, "password": GHOST_PASSWORD},
    "outage": {"user": OUTAGE_USER, "password": OUTAGE_PASSWORD},
}
SECRETS = (GOOD_PASSWORD, NOAPI_PASSWORD, GHOST_PASSWORD, OUTAGE_PASSWORD)
# s5's answer takes this long: in flight at every scrape (the stop cuts it), the last one
# after s3's SHORT_WINDOW has passed.
SLOW = 35.0
TIMEOUT = "40s"  # client.timeout: longer than SLOW, so s5's call is not cut short
# s3's window: open at start, over before the test ends; long enough that its slot is still
# open at the first scrape (taken once the outage's three calls, a second apart, are in),
# however long the start takes (12 s was not, with every worker starting at once).
SHORT_WINDOW = 25.0
HOLD = 27 * 60  # steps (minutes) each series is held after the last scrape: 27 hours
WEEK_HOLD = (7 * 24 + 3) * 60  # a week and 3 hours: past a weekly server's success gap


def _write(path: Path, sim: Simulator, state: Path, servers: list[dict[str, Any]]) -> Path:
    return write_daemon_config(
        path,
        servers=servers,
        credentials=CREDENTIALS,
        daemon={"state_path": str(state), "metrics_listen": "127.0.0.1:0", "shutdown_grace": "1s"},
        client={"timeout": TIMEOUT},
        backoff={"retry_initial": "1s", "retry_max": "1s"},
        # s4, where there is one, is blacked out for good.
        blackouts=[
            {"name": "frozen", "servers": ["s4"], "windows": ["2000-01-01T00:00/2999-01-01T00:00"]}
        ]
        if any(server["name"] == "s4" for server in servers)
        else None,
    )


def _server(sim: Simulator, index: int, credentials: str, window: str) -> dict[str, Any]:
    return {
        "name": f"s{index}",
        "api_url": sim.url + api_path(index),
        "credentials": credentials,
        "windows": [window],
    }


def _weekly(window: str) -> str:
    """A daily window as a weekly one: the same hours, on today's weekday only (UTC)."""
    today = datetime.now(UTC) - timedelta(seconds=1)  # window_from_now opens a second ago
    return f"{today:%a}".lower() + " " + window


def _only(server: str, credentials: str) -> Any:
    """Keep the series of one server and one credentials table, and the daemon-wide ones."""

    def keep(labels: Mapping[str, str]) -> bool:
        return labels.get("server", server) == server and (
            labels.get("credentials", credentials) == credentials
        )

    return keep


# promtool evaluates the rules every minute over a week (~20 s of CPU): on a loaded 2-core
# machine the test took over the default 120 s. Long: handed out to a worker first.
@pytest.mark.long
@pytest.mark.timeout(360)
def test_the_shipped_alert_rules_fire_on_the_series_a_real_daemon_exports(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon, refused_port: int
) -> None:
    promtool()  # skip (or under CI fail) before starting anything
    window = window_from_now(-2, 600)
    simulator.set_fault("latency", latency=SLOW, path=api_path(5))
    simulator.set_fault("http500", path=api_path(7))
    config = _write(
        tmp_path / "refreshd.toml",
        simulator,
        tmp_path / "state.db",
        [
            _server(simulator, 0, "main", window),  # succeeds
            _server(simulator, 1, "noapi", window),  # permission denied: suspended
            _server(simulator, 2, "ghost", window),  # login refused: credentials wait
            # Refused: missed. Not a 500: an answer unread unproves main, and s3's retries
            # would then queue behind s5's call in flight (one unproven call at a time).
            {
                **_server(simulator, 3, "main", window_from_now(-2, SHORT_WINDOW)),
                "api_url": f"http://127.0.0.1:{refused_port}{api_path(3)}",
            },
            _server(simulator, 4, "main", window),  # blacked out for good: unplanned
            _server(simulator, 5, "main", window),  # slow: in flight
            _server(simulator, 6, "main", _weekly(window)),  # weekly: succeeds
            # 500s: failed-login budget spent; its slot outlasts the test (none missed)
            _server(simulator, 7, "outage", window_from_now(-2, 3600)),
        ],
    )
    daemon = start_daemon(config)
    port = daemon.metrics_port()
    daemon.wait_for("refresh.succeeded", server="s0")
    daemon.wait_for("server.suspended", server="s1")
    daemon.wait_for("credentials.suspended", credentials="ghost")
    daemon.wait_for("server.unplanned", server="s4")
    daemon.wait_for("refresh.succeeded", server="s6")
    daemon.wait_for("credentials.suspended", credentials="outage", wait="failed_login_budget")
    eventually(lambda: simulator.stats()["requests"].get(api_path(5)) == 1, what="s5 called")

    first = scrape(port)
    assert first.value("refreshd_slots_missed_total", server="s3") == 0, "s3's slot ended early"
    in_flight = first.value("refreshd_longest_call_seconds") or 0.0
    later: list[Scrape] = []
    # The oldest call's age, read twice a second apart: how fast it grows while in flight.
    eventually(
        lambda: (
            (later.append(scrape(port)) or True)
            and (later[-1].value("refreshd_longest_call_seconds") or 0.0) >= in_flight + 1.0
        ),
        what="the call in flight one second older",
    )
    second = later[-1]
    daemon.wait_for("slot.missed", server="s3", timeout=SHORT_WINDOW + 15)
    missed: list[Scrape] = []
    eventually(
        lambda: (
            (missed.append(scrape(port)) or True)
            and missed[-1].value("refreshd_slots_missed_total", server="s3") == 1
        ),
        what="the missed slot counted",
    )
    third = missed[-1]
    assert daemon.stop() == EXIT_OK
    gone = scrape(port)
    assert gone.samples is None

    scrapes = [first, second, third]
    for each in scrapes:
        assert not [secret for secret in SECRETS if secret in each.text]
    age = second.value("refreshd_longest_call_seconds") or 0.0
    growth = (age - in_flight) / (second.at - first.at)
    assert 0.5 < growth < 1.5, growth  # seconds per second: a clock, not a counter
    # s4 has no slot to expect a success in (no success gap): RefreshdServerUnplanned's case.
    daily = [f"s{index}" for index in (0, 1, 2, 3, 5, 7)]
    assert (second.value("refreshd_server_success_gap_seconds", server="s6") or 0) > 7 * 86400
    # Firing at both times below: s1's suspension, ghost's refused login
    # and s4 with no slot planned.
    standing = {
        "RefreshdServerSuspended": [alert("RefreshdServerSuspended", server="s1")],
        "RefreshdCredentialsWaiting": [
            alert("RefreshdCredentialsWaiting", credentials="ghost", reason="refused_login")
        ],
        "RefreshdServerUnplanned": [alert("RefreshdServerUnplanned", server="s4")],
    }
    run_promtool(
        tmp_path,
        [
            # s0 alone, refreshed daily (a 10-minute window): silent for 25 hours; past its
            # success gap (24 h 10 min) and the hour's margin it fires.
            {
                "input_series": input_series(scrapes, hold=HOLD, keep=_only("s0", "main")),
                "alert_rule_test": [
                    *expect("25h", {}),
                    *expect(
                        "27h", {"RefreshdNoSuccess": [alert("RefreshdNoSuccess", server="s0")]}
                    ),
                ],
            },
            # s6 alone, refreshed weekly: silent for 27 hours (and for 7 days), fires once a
            # whole week and its slot passed without a success.
            {
                "input_series": input_series(scrapes, hold=WEEK_HOLD, keep=_only("s6", "main")),
                "alert_rule_test": [
                    *expect("27h", {}),
                    *expect("168h", {}),
                    *expect(
                        "170h", {"RefreshdNoSuccess": [alert("RefreshdNoSuccess", server="s6")]}
                    ),
                ],
            },
            # Every state at once.
            {
                "input_series": input_series(scrapes, hold=HOLD),
                "alert_rule_test": [
                    *expect(
                        "30m",
                        {
                            **standing,
                            "RefreshdSlotMissed": [alert("RefreshdSlotMissed", server="s3")],
                        },
                    ),
                    # Never succeeded (s1 to s3, s7) counts from first seen, like s0's last
                    # success; weekly s6 is not due yet. The outage pages no one: a warning
                    # after an hour, never the wrong-password alert.
                    *expect(
                        "27h",
                        {
                            "RefreshdNoSuccess": [
                                alert("RefreshdNoSuccess", server=name) for name in daily
                            ],
                            **standing,
                            "RefreshdLoginsPaused": [
                                alert(
                                    "RefreshdLoginsPaused",
                                    credentials="outage",
                                    reason="failed_login_budget",
                                )
                            ],
                        },
                    ),
                ],
            },
            # The call in flight never ends: its age passes client.timeout.
            {
                "input_series": input_series(
                    scrapes,
                    hold=60,
                    keep=_only("s0", "main"),
                    growth={"refreshd_longest_call_seconds": growth},
                ),
                "alert_rule_test": [
                    *expect("2m", {}),
                    *expect("40m", {"RefreshdCallStuck": [alert("RefreshdCallStuck")]}),
                ],
            },
            # The daemon stopped: scrapes fail.
            {
                "input_series": input_series([*scrapes, gone], hold=60, keep=_only("s0", "main")),
                "alert_rule_test": [
                    *expect("4m", {}),
                    *expect("10m", {"RefreshdDown": [alert("RefreshdDown")]}),
                ],
            },
            # No target at all: Prometheus has no `up` for the job.
            {
                "input_series": input_series(scrapes, hold=60, keep=_only("s0", "main"), up=False),
                "alert_rule_test": [
                    *expect("10m", {"RefreshdAbsent": [alert("RefreshdAbsent", scraped=False)]}),
                ],
            },
        ],
    )


def test_a_restarted_daemon_exports_the_credentials_wait_and_first_seen_it_left(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    window = window_from_now(-2, 600)
    config = _write(
        tmp_path / "refreshd.toml",
        simulator,
        tmp_path / "state.db",
        [_server(simulator, 0, "main", window), _server(simulator, 2, "ghost", window)],
    )
    first = start_daemon(config)
    first.wait_for("credentials.suspended", credentials="ghost")
    before = scrape(first.metrics_port())
    assert first.stop() == EXIT_OK

    second = start_daemon(config)
    after = scrape(second.metrics_port())

    assert simulator.stats()["requests"].get(api_path(2)) == 1  # still waiting: not tried
    refused = {"reason": "refused_login"}
    assert after.value("refreshd_credentials_waiting", credentials="ghost", **refused) == 1
    assert after.value("refreshd_credentials_waiting", credentials="main", **refused) == 0
    seen = "refreshd_server_first_seen_timestamp_seconds"
    for server in ("s0", "s2"):
        assert before.value(seen, server=server) is not None
        assert after.value(seen, server=server) == before.value(seen, server=server)
    assert after.value("refreshd_last_success_timestamp_seconds", server="s2") is None
    assert not [secret for secret in SECRETS if secret in before.text + after.text]

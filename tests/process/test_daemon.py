"""The daemon's must-shows, each on the real `refreshd run` process against the simulator on
loopback: judged by what the simulator saw (per-path counts and call times), the JSON lines
on stdout, the exit code and the state file."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from refreshd.simulator import API_PATH, Simulator
from tests.support.config import (
    GOOD_PASSWORD,
    GOOD_USER,
    instant,
    window_from_now,
    write_daemon_config,
)
from tests.support.daemon import StartDaemon, assert_json_lines_only, run_refreshd
from tests.support.simulator import api_path, calls_on, total_requests
from tests.support.waiting import holds_for

pytestmark = pytest.mark.slow

WRONG_PASSWORD = "Wr0ngSecret7qX"  # letters and digits: VICIdial echoes it back unfiltered
REFRESH_EVENTS = ("refresh.succeeded", "refresh.failed", "refresh.retrying")


# -- helpers ---------------------------------------------------------------------------------


def server(sim: Simulator, index: int, window: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"s{index:02d}",
        "api_url": sim.url + api_path(index),
        "credentials": "main",
        "windows": [window],
        **extra,
    }


def write_config(
    tmp_path: Path,
    servers: list[Mapping[str, Any]],
    *,
    credentials: Mapping[str, Mapping[str, Any]] | None = None,
    daemon: Mapping[str, Any] | None = None,
    backoff: Mapping[str, Any] | None = None,
    blackouts: list[Mapping[str, Any]] | None = None,
) -> Path:
    return write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=servers,
        credentials=credentials or {"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        daemon={"state_path": str(state_dir(tmp_path) / "state.db"), "metrics_listen": ""}
        | dict(daemon or {}),
        client={"timeout": "3s"},
        backoff=backoff,
        blackouts=blackouts,
    )


def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def gaps(calls: list[dict[str, Any]]) -> list[float]:
    return [later["t"] - earlier["t"] for earlier, later in itertools.pairwise(calls)]


# -- once per slot ---------------------------------------------------------------------------


def test_twenty_servers_are_each_refreshed_exactly_once_in_their_window(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    window = window_from_now(2, 40)
    config = write_config(tmp_path, [server(simulator, i, window) for i in range(20)])
    daemon = start_daemon(config)

    daemon.wait_for("refresh.succeeded", count=20, timeout=20)
    holds_for(
        lambda: total_requests(simulator) <= 20,
        seconds=4,
        what="no second refresh while the window is still open",
    )

    requests = simulator.stats()["requests"]
    assert {api_path(i): requests.get(api_path(i), 0) for i in range(20)} == {
        api_path(i): 1 for i in range(20)
    }
    assert len(daemon.matching("refresh.succeeded")) == 20
    starts = {line["slot"] for line in daemon.matching("refresh.succeeded")}
    (slot_start,) = starts
    assert all(call["t"] >= instant(slot_start).timestamp() for call in simulator.calls())


def test_sigterm_stops_the_daemon_with_exit_0_and_logs_daemon_stopped(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    config = write_config(tmp_path, [server(simulator, 0, window_from_now(1, 60))])
    daemon = start_daemon(config)
    daemon.wait_for("refresh.succeeded", timeout=15)

    daemon.signal(signal.SIGTERM)
    code = daemon.wait(timeout=30)

    assert code == 0, daemon.stderr
    events = [line["event"] for line in daemon.events]
    assert events[-2:] == ["daemon.stopping", "daemon.stopped"]
    assert daemon.matching("daemon.stopping", signal="SIGTERM")


def test_a_restart_inside_the_same_window_does_not_refresh_again(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    window = window_from_now(2, 40)
    config = write_config(tmp_path, [server(simulator, i, window) for i in range(20)])
    first = start_daemon(config)
    first.wait_for("refresh.succeeded", count=20, timeout=20)
    assert first.stop() == 0
    assert first.matching("daemon.stopped")

    second = start_daemon(config)
    second.wait_for("daemon.started", timeout=15)
    holds_for(
        lambda: total_requests(simulator) <= 20,
        seconds=5,
        what="no refresh after the restart while the window is still open",
    )

    requests = simulator.stats()["requests"]
    assert [requests.get(api_path(i), 0) for i in range(20)] == [1] * 20
    assert second.matching("refresh.succeeded") == []
    assert second.matching("refresh.failed") == []


# -- outcomes and back-off -------------------------------------------------------------------


def test_a_permission_denied_server_is_called_at_growing_gaps_only(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    config = write_config(
        tmp_path,
        [server(simulator, 0, window_from_now(-60, 3600))],  # open all the time
        credentials={"main": {"user": "noapi", "password": "noapi-pass"}},
        backoff={"suspend_initial": "5s", "suspend_max": "1h"},
    )
    daemon = start_daemon(config)
    daemon.wait_for("server.suspended", timeout=15)

    # 5 s, then 10 s: calls at 0, 5 and 15 s (the next would come at 35 s).
    daemon.wait_for("server.suspended", count=3, timeout=30)

    calls = calls_on(simulator, api_path(0))
    assert [call["answer_kind"] for call in calls] == ["no_refresh_permission"] * len(calls)
    assert len(calls) == 3, gaps(calls)
    between = gaps(calls)
    assert all(later > earlier for earlier, later in itertools.pairwise(between))
    for number, gap in enumerate(between):
        assert gap >= 5 * 2**number, between  # suspend_initial, doubling
    suspended = daemon.matching("server.suspended", server="s00")
    assert len(suspended) == len(calls)
    assert [line["suspensions"] for line in suspended] == list(range(1, len(calls) + 1))
    for line in suspended:
        assert line["outcome"] == "permission_denied"
        assert instant(line["suspended_until"]) > instant(line["timestamp"])


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `refreshd` command beside the running daemon, on the same config."""
    return run_refreshd(*args, "-c", config)


def test_a_manual_refresh_that_succeeds_ends_the_running_daemons_suspension(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    config = write_config(
        tmp_path,
        [server(simulator, 0, window_from_now(-60, 3600))],
        credentials={"main": {"user": "noapi", "password": "noapi-pass"}},
        backoff={"suspend_initial": "1h", "suspend_max": "1h"},
    )
    daemon = start_daemon(config)
    daemon.wait_for("server.suspended", timeout=15)
    simulator.update_user("noapi", api_access=True)  # the operator fixes VICIdial

    manual = run_cli(config, "refresh", "s00")
    assert manual.returncode == 0, manual.stderr

    # Noticed at the daemon's next heartbeat (10 s), not after the hour's suspension:
    # the slot's run, tried and not done, goes out again at once.
    (resumed,) = daemon.wait_for("server.resumed", timeout=25)
    assert resumed["reason"] == "a manual refresh succeeded"
    daemon.wait_for("refresh.succeeded", trigger="schedule", timeout=15)
    kinds = [call["answer_kind"] for call in calls_on(simulator, api_path(0))]
    assert kinds == ["no_refresh_permission", "success", "success"]


def test_a_manual_refresh_that_logs_in_ends_the_running_daemons_credentials_wait(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    config = write_config(
        tmp_path,
        [server(simulator, 0, window_from_now(-60, 3600))],
        credentials={"main": {"user": GOOD_USER, "password": WRONG_PASSWORD}},
        backoff={"auth_retry": "1h"},
    )
    daemon = start_daemon(config)
    daemon.wait_for("credentials.suspended", timeout=15)
    simulator.update_user(GOOD_USER, password=WRONG_PASSWORD)  # VICIdial's password changed

    manual = run_cli(config, "refresh", "s00")
    assert manual.returncode == 0, manual.stderr

    (resumed,) = daemon.wait_for("credentials.resumed", timeout=25)
    assert resumed["credentials"] == "main"
    daemon.wait_for("refresh.succeeded", trigger="schedule", timeout=15)
    assert simulator.stats()["logins"]["failed"] == 1


def test_a_manual_refresh_refused_a_login_makes_the_running_daemon_wait_too(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    config = write_config(
        tmp_path,
        [server(simulator, 0, window_from_now(3600, 600))],  # not due for an hour
        backoff={"auth_retry": "1h"},
    )
    daemon = start_daemon(config)
    daemon.wait_for("daemon.started")
    simulator.update_user(GOOD_USER, password="changed-on-the-dialer")

    manual = run_cli(config, "refresh", "s00")
    assert manual.returncode == 1

    (adopted,) = daemon.wait_for("credentials.suspended", timeout=25)
    assert adopted["credentials"] == "main"
    assert "manual refresh" in adopted["reason"]
    assert instant(adopted["suspended_until"]) - instant(adopted["timestamp"]) > timedelta(
        minutes=59
    )
    assert simulator.stats()["logins"]["failed"] == 1
    # VICIdial echoed the refused password; neither process may repeat it.
    assert [c["answer_kind"] for c in simulator.calls()] == ["login_incorrect"]
    daemon.stop()
    for text in (manual.stdout, manual.stderr, daemon.stdout, daemon.stderr):
        assert GOOD_PASSWORD not in text


def test_servers_sharing_wrong_credentials_cost_one_login_attempt_in_all(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    config = write_config(
        tmp_path,
        [server(simulator, i, window_from_now(-60, 3600)) for i in range(5)],
        credentials={"main": {"user": GOOD_USER, "password": WRONG_PASSWORD}},
        backoff={"auth_retry": "1h"},
    )
    daemon = start_daemon(config)
    daemon.wait_for("credentials.suspended", timeout=15)

    holds_for(
        lambda: total_requests(simulator) <= 1,
        seconds=30,  # three heartbeats, each of which reads the state file again
        what="no second login attempt during the credentials wait",
    )

    stats = simulator.stats()
    assert stats["logins"]["failed"] == 1
    assert total_requests(simulator) == 1
    (line,) = daemon.matching("credentials.suspended")
    assert line["credentials"] == "main"
    assert line["outcome"] == "auth_failed"
    assert instant(line["suspended_until"]) - instant(line["timestamp"]) > timedelta(minutes=59)
    assert len(daemon.matching("refresh.failed", outcome="auth_failed")) == 1


def test_a_transient_failure_is_retried_with_capped_exponential_backoff_until_it_succeeds(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    simulator.set_fault("http500", path=api_path(0), count=3)
    config = write_config(
        tmp_path,
        [server(simulator, 0, window_from_now(-60, 3600))],
        backoff={"retry_initial": "1s", "retry_max": "8s"},
    )
    daemon = start_daemon(config)

    (succeeded,) = daemon.wait_for("refresh.succeeded", timeout=20)

    assert succeeded["attempt"] == 4
    retrying = daemon.matching("refresh.retrying")
    assert [line["attempt"] for line in retrying] == [1, 2, 3]
    for line in retrying:
        assert line["outcome"] == "transient"
        assert line["http_status"] == 500
        assert instant(line["retry_at"]) > instant(line["timestamp"])
    calls = calls_on(simulator, api_path(0))
    assert [call["answer_kind"] for call in calls] == ["fault_http500"] * 3 + ["success"]
    # Full jitter draws each wait uniformly in [0, cap], floored at 1 s, so the gaps need
    # not grow; what the policy guarantees is the floor and the caps, which double:
    # retry_initial 1 s, then 2 s, then 4 s (under retry_max 8 s). Slack for the timer.
    caps = [1.0, 2.0, 4.0]
    for gap, cap in zip(gaps(calls), caps, strict=True):
        assert 1.0 <= gap <= cap + 0.5, (gaps(calls), caps)
    for line, cap in zip(retrying, caps, strict=True):
        wait = (instant(line["retry_at"]) - instant(line["timestamp"])).total_seconds()
        assert 0.9 <= wait <= cap + 0.1, (line, cap)


def test_a_slot_that_ends_without_success_is_logged_slot_missed(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    simulator.set_fault("http500", path=api_path(0))  # every call, for good
    config = write_config(
        tmp_path,
        [server(simulator, 0, window_from_now(1, 6))],
        backoff={"retry_initial": "1s", "retry_max": "2s"},
    )
    daemon = start_daemon(config)

    (missed,) = daemon.wait_for("slot.missed", timeout=20)
    holds_for(
        lambda: len(calls_on(simulator, api_path(0))) <= missed["attempts"],
        seconds=1,
        what="no call after the slot was missed",
    )

    calls = calls_on(simulator, api_path(0))
    assert missed["server"] == "s00"
    assert missed["outcome"] == "transient"
    assert missed["attempts"] == len(calls) >= 2
    slot_start = instant(missed["slot"]).timestamp()
    assert all(slot_start <= call["t"] < slot_start + 6 for call in calls)
    assert len(daemon.matching("refresh.retrying")) == len(calls) - 1


def test_a_slot_that_ends_while_the_server_is_suspended_is_logged_slot_missed(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    config = write_config(
        tmp_path,
        # Long enough to open after a slow start under load; slot.missed comes at once
        # anyway, since the 1 h suspension outlasts the slot.
        [server(simulator, 0, window_from_now(2, 30))],
        credentials={"main": {"user": "noapi", "password": "noapi-pass"}},
        backoff={"suspend_initial": "1h", "suspend_max": "1h"},
    )
    daemon = start_daemon(config)
    daemon.wait_for("server.suspended", timeout=15)

    (missed,) = daemon.wait_for("slot.missed", timeout=8)

    assert missed["outcome"] == "permission_denied"


def test_no_call_is_made_in_a_blackout_covering_the_window(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(minutes=1), now + timedelta(hours=1)
    blackout = f"{start.isoformat()}/{end.isoformat()}"  # absolute, with UTC offsets
    config = write_config(
        tmp_path,
        [server(simulator, 0, window_from_now(1, 5))],
        blackouts=[{"name": "freeze", "servers": ["*"], "windows": [blackout]}],
    )
    daemon = start_daemon(config)
    daemon.wait_for("daemon.started", timeout=15)

    holds_for(
        lambda: total_requests(simulator) == 0,
        seconds=9,  # past the window's end
        what="no call during the blackout",
    )

    assert total_requests(simulator) == 0
    assert [line for line in daemon.events if line["event"] in REFRESH_EVENTS] == []


def test_every_repeats_the_refresh_once_per_period_inside_the_window(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    config = write_config(tmp_path, [server(simulator, 0, window_from_now(1, 60), every="3s")])
    daemon = start_daemon(config)
    daemon.wait_for("refresh.succeeded", timeout=15)
    first = time.monotonic()

    daemon.wait_for("refresh.succeeded", count=4, timeout=15)
    holds_for(
        lambda: len(calls_on(simulator, api_path(0))) <= 2 + (time.monotonic() - first) // 3,
        seconds=1.5,
        what="no more than one run per 3 s period",
    )
    elapsed = time.monotonic() - first

    calls = calls_on(simulator, api_path(0))
    assert abs(len(calls) - (1 + elapsed // 3)) <= 1, (len(calls), elapsed)
    # Each repeat fires at its due (3 s apart); the margin covers a loaded CI machine.
    for gap in gaps(calls):
        assert 2.5 <= gap <= 4.5, gaps(calls)
    succeeded = daemon.matching("refresh.succeeded")
    dues = [line.get("due", line["slot"]) for line in succeeded]
    assert len(set(dues)) == len(dues) == len(calls), dues


def test_two_servers_sending_the_identical_request_at_the_same_moment_send_it_once(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    window = window_from_now(1, 60)
    same = {"api_url": simulator.api_url, "credentials": "main", "windows": [window]}
    config = write_config(tmp_path, [{"name": "east-a", **same}, {"name": "east-b", **same}])
    daemon = start_daemon(config)

    daemon.wait_for("refresh.succeeded", count=2, timeout=15)
    holds_for(lambda: total_requests(simulator) <= 1, seconds=1, what="the request is sent once")

    assert simulator.stats()["requests"] == {API_PATH: 1}
    succeeded = daemon.matching("refresh.succeeded")
    assert {line["server"] for line in succeeded} == {"east-a", "east-b"}
    assert len({line["servers_flagged"] for line in succeeded}) == 1  # the same answer


def test_forty_servers_sending_the_identical_request_at_the_same_moment_send_it_once(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    # Enough that firing them one by one would let the first answer come back before the
    # last one is queued, and the request go out again.
    window = window_from_now(1, 60)
    same = {"api_url": simulator.api_url, "credentials": "main", "windows": [window]}
    config = write_config(tmp_path, [{"name": f"east-{i:02d}", **same} for i in range(40)])
    daemon = start_daemon(config)

    daemon.wait_for("refresh.succeeded", count=40, timeout=20)
    holds_for(lambda: total_requests(simulator) <= 1, seconds=1, what="the request is sent once")

    assert simulator.stats()["requests"] == {API_PATH: 1}


def test_an_idle_daemon_makes_no_request_and_status_shows_its_next_run(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    hours = 3
    expected = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours, seconds=1)
    config = write_config(tmp_path, [server(simulator, 0, window_from_now(hours * 3600, 600))])
    daemon = start_daemon(config)
    daemon.wait_for("daemon.started", timeout=15)

    holds_for(lambda: total_requests(simulator) == 0, seconds=3, what="an idle daemon calls no one")
    status = run_cli(config, "status", "--json")

    assert total_requests(simulator) == 0
    assert [line for line in daemon.events if line["event"] in REFRESH_EVENTS] == []
    assert status.returncode == 0, status.stderr
    (entry,) = json.loads(status.stdout)["servers"]
    assert entry["server"] == "s00"
    assert abs(instant(entry["next_run"]) - expected) <= timedelta(seconds=2), entry
    assert entry["next_slot"] == entry["next_run"]


# -- output ----------------------------------------------------------------------------------


def test_stdout_holds_only_json_lines_with_timestamp_level_and_event(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    simulator.set_fault("html", path=api_path(2), count=1)  # an unexpected body, logged
    window = window_from_now(-60, 3600)
    config = write_config(
        tmp_path,
        [
            server(simulator, 0, window),
            server(simulator, 1, window, credentials="noapi"),
            server(simulator, 2, window),
        ],
        credentials={
            "main": {"user": GOOD_USER, "password": GOOD_PASSWORD},
            "noapi": {"user": "noapi", "password": "noapi-pass"},
        },
        backoff={"retry_initial": "1s", "retry_max": "2s"},
    )
    daemon = start_daemon(config)
    daemon.wait_for("refresh.succeeded", count=2, timeout=15)
    daemon.wait_for("server.suspended", timeout=15)
    daemon.wait_for("refresh.retrying", outcome="unexpected", timeout=15)

    assert daemon.stop() == 0

    assert daemon.stdout_lines, daemon.stderr
    assert len(daemon.events) == len(daemon.stdout_lines)
    assert_json_lines_only(daemon)
    assert daemon.stderr == ""


def test_no_password_appears_in_stdout_stderr_or_the_state_file(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    window = window_from_now(-60, 3600)
    config = write_config(
        tmp_path,
        [server(simulator, 0, window), server(simulator, 1, window, credentials="wrong")],
        credentials={
            "main": {"user": GOOD_USER, "password": GOOD_PASSWORD},
            "wrong": {"user": GOOD_USER, "password": WRONG_PASSWORD},
        },
        backoff={"auth_retry": "1h"},
    )
    daemon = start_daemon(config)
    daemon.wait_for("refresh.succeeded", timeout=15)
    daemon.wait_for("credentials.suspended", timeout=15)
    echoed = [c for c in simulator.calls() if c["answer_kind"] == "login_incorrect"]
    assert echoed, "the simulator never answered Login incorrect (echoing the password)"
    assert daemon.stop() == 0

    files = {path: path.read_bytes() for path in state_dir(tmp_path).iterdir()}
    assert files, "no state file written"
    for secret in (GOOD_PASSWORD, WRONG_PASSWORD):
        assert secret not in daemon.stdout
        assert secret not in daemon.stderr
        for path, data in files.items():
            assert secret.encode() not in data, path
    (failed,) = daemon.matching("refresh.failed", outcome="auth_failed")
    assert "***" in failed["detail"]


def test_max_concurrency_bounds_the_calls_in_flight(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    simulator.set_fault("latency", latency=0.3)
    window = window_from_now(1, 60)
    config = write_config(
        tmp_path,
        [server(simulator, i, window) for i in range(10)],
        daemon={"max_concurrency": 2},
    )
    daemon = start_daemon(config)

    daemon.wait_for("refresh.succeeded", count=10, timeout=20)

    peak = simulator.stats()["peak_in_flight"]
    assert peak <= 2
    assert peak == 2, "the calls never overlapped: the limit was not exercised"

"""Reloads as `systemctl reload` sends them, many times over, to the real daemon: nothing
piles up (issue 12, item 12). Before the fix, each reload that changed `[client]` kept the
old HTTP session (its kept-alive sockets) and its deadline thread until the daemon stopped:
300 reloads took it from 12 to 217 file descriptors; and every reload logged each per-server
warning once per server.

`pytest -s` prints the figures for docs/RELIABILITY.md as `RELIABILITY {...}` lines."""

from __future__ import annotations

import signal
from pathlib import Path

from refreshd.simulator import Simulator
from tests.support.config import GOOD_PASSWORD, GOOD_USER, window_from_now, write_daemon_config
from tests.support.daemon import DaemonProcess, StartDaemon, fds_and_threads
from tests.support.fleet import report
from tests.support.simulator import api_path, total_requests
from tests.support.waiting import eventually

# Before the fix each reload kept a socket and a thread: thirty leave thirty of each, far
# past the slack below (the count is not the claim; every reload must leave nothing).
RELOADS = 30
SERVERS = 5
# Room for what comes and goes between two counts (a call's socket on its way out).
FD_SLACK = 3


def write_config(tmp_path: Path, sim: Simulator, timeout: str) -> Path:
    """Five servers refreshed every second (spread over the second) while the test runs,
    so that every client a reload puts in place makes calls and keeps a socket."""
    window = window_from_now(-2, 600)
    return write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[
            {
                "name": f"s{index}",
                "api_url": sim.url + api_path(index),
                "credentials": "main",
                "windows": [window],
                "every": "1s",
            }
            for index in range(SERVERS)
        ],
        credentials={"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": "", "spread": "1s"},
        client={"timeout": timeout},
    )


def reload(daemon: DaemonProcess, sim: Simulator, times_before: int) -> None:
    """SIGHUP, wait until it was applied, then until a call went out after it (on the new
    client, which thereby opens a connection of its own)."""
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("config.reloaded", count=times_before + 1)
    sent = total_requests(sim)
    eventually(lambda: total_requests(sim) > sent, timeout=5, what="a call after the reload")


def test_thirty_reloads_changing_the_client_leave_no_socket_or_thread_behind(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(write_config(tmp_path, simulator, "5s"))
    daemon.wait_for("refresh.succeeded", count=SERVERS)
    fds_start, threads_start = fds_and_threads(daemon.pid)
    peak_fds = fds_start

    for index in range(RELOADS):
        write_config(tmp_path, simulator, "6s" if index % 2 == 0 else "5s")
        reload(daemon, simulator, index)
        peak_fds = max(peak_fds, fds_and_threads(daemon.pid)[0])

    fds_end, threads_end = fds_and_threads(daemon.pid)
    report(
        "reload-leaks",
        reloads=RELOADS,
        fds=[fds_start, fds_end],
        peak_fds=peak_fds,
        threads=[threads_start, threads_end],
        calls=total_requests(simulator),
    )
    assert fds_end <= fds_start + FD_SLACK
    assert peak_fds <= fds_start + FD_SLACK + 2  # never piled up in between either
    assert threads_end <= threads_start + 1
    assert daemon.matching("refresh.failed") == []
    assert GOOD_PASSWORD not in daemon.stdout + daemon.stderr


def test_each_reload_logs_each_distinct_warning_once_naming_its_places(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    # `every = "1s"` on five servers: one warning, five places; the inline password: one.
    daemon = start_daemon(write_config(tmp_path, simulator, "5s"))
    daemon.wait_for("daemon.started")
    for index in range(3):
        reload(daemon, simulator, index)

    warnings = daemon.matching("config.warning")
    every = [w for w in warnings if "under 5 minutes" in w["warning"]]
    password = [w for w in warnings if "password is written in the config" in w["warning"]]
    assert len(every) == 4  # start + three reloads, once each
    assert len(password) == 4
    assert len(warnings) == 8
    assert every[0]["places"] == SERVERS
    assert every[0]["warning"].startswith(
        "servers[0].every, servers[1].every, servers[2].every, servers[3].every, "
        "servers[4].every: 1s is under 5 minutes"
    )

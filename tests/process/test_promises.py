"""Issue 11's promises kept on the real processes: `refreshd run`, `refreshd refresh` and
`refreshd check --online` against the simulator on loopback, each judged by what the
simulator counted: failed logins per VICIdial user, lock-outs, refreshes per slot.

Items 4, 6 and 9 have their process tests in test_cli_refresh.py, test_cli_check.py and
test_daemon.py. With `pytest -s` each test prints one `RELIABILITY {...}` line with its
figures (docs/RELIABILITY.md)."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from refreshd.simulator import Simulator
from tests.support.config import GOOD_PASSWORD, GOOD_USER, window_from_now, write_daemon_config
from tests.support.daemon import EXIT_FAILED, RunRefreshd, StartDaemon
from tests.support.fleet import http_get, report
from tests.support.simulator import api_path, calls_on
from tests.support.waiting import eventually, holds_for

pytestmark = pytest.mark.slow

WRONG_PASSWORD = "Wr0ngSecret7qX"
CHANGED_ON_THE_DIALER = "changed-on-the-dialer-9"
TIMEOUT = 1.0  # client.timeout, seconds: every call is over within it
# Calls end at the deadline, give or take the scheduling of a loaded test machine (and far
# below what each fault would last without it: 75 s, 120 s).
DEADLINE_MS = (TIMEOUT * 1000 - 50, TIMEOUT * 1000 + 4000)
# Bounds on waits for what a daemon does first: its start takes seconds on a loaded machine.
FIRST = 30.0
# Retries inside the slot every second or two: a promise that rests on the back-off
# alone would be broken within the test's few seconds.
QUICK_RETRIES = {"retry_initial": "1s", "retry_max": "2s"}


# -- configs -------------------------------------------------------------------------------


def server(sim: Simulator, index: int, **extra: Any) -> dict[str, Any]:
    """Server s<index> on its own path (so the simulator counts it apart), with a server_ip
    of its own (so no two servers send the identical request and share one call)."""
    return {
        "name": f"s{index}",
        "api_url": sim.url + api_path(index),
        "credentials": "main",
        "server_ip": f"10.1.0.{index + 1}",
        "windows": [window_from_now(-60, 3600)],  # open for the whole test
        **extra,
    }


def write_config(
    tmp_path: Path,
    servers: Sequence[Mapping[str, Any]],
    *,
    credentials: Mapping[str, Mapping[str, Any]] | None = None,
    backoff: Mapping[str, Any] | None = None,
    metrics_listen: str = "",
) -> Path:
    return write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=list(servers),
        credentials=credentials or {"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": metrics_listen},
        client={"timeout": f"{TIMEOUT:g}s"},
        backoff=backoff,
    )


# -- what the simulator counted ------------------------------------------------------------


def failed_logins(sim: Simulator, user: str) -> list[float]:
    """When VICIdial refused a login as `user` (its PHP ran and answered Login incorrect),
    whether or not the answer reached refreshd; oldest first."""
    return [
        call["t"]
        for call in sim.calls()
        if call["user"] == user and call["answer_kind"] == "login_incorrect"
    ]


def vicidial_failed_login_count(sim: Simulator, user: str) -> int:
    """VICIdial's own counter for the user (`failed_login_count`; a good login zeroes it)."""
    return int(sim.stats()["users"][user]["failed_login_count"])


def refreshes(sim: Simulator, index: int) -> list[float]:
    """When server s<index>'s refreshes succeeded on the simulator, oldest first."""
    return [c["t"] for c in calls_on(sim, api_path(index)) if c["answer_kind"] == "success"]


def never_locked(sim: Simulator) -> bool:
    return sim.stats()["lockouts"] == []


def gaps(times: Sequence[float]) -> list[float]:
    return [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)]


# -- 1. one failed-login budget per VICIdial user --------------------------------------------


def ten_tables_one_user(tmp_path: Path, sim: Simulator) -> Path:
    """Ten credentials tables naming one VICIdial user with one wrong password, for ten
    servers on two api_url paths (two web servers of one cluster); auth_retry 4 s."""
    paths = (api_path(0), api_path(1))
    servers = [
        {**server(sim, i), "api_url": sim.url + paths[i % 2], "credentials": f"t{i}"}
        for i in range(10)
    ]
    tables = {f"t{i}": {"user": GOOD_USER, "password": WRONG_PASSWORD} for i in range(10)}
    return write_config(tmp_path, servers, credentials=tables, backoff={"auth_retry": "4s"})


def test_check_online_with_ten_tables_naming_one_user_costs_one_failed_login(
    tmp_path: Path, simulator: Simulator, run_refreshd: RunRefreshd
) -> None:
    config = ten_tables_one_user(tmp_path, simulator)

    code, _, err = run_refreshd(["check", "--online", "-c", config])

    refused = failed_logins(simulator, GOOD_USER)
    report("promise 1: check --online, 10 tables naming one user", failed_logins=len(refused))
    assert len(refused) == 1
    assert vicidial_failed_login_count(simulator, GOOD_USER) == 1
    assert never_locked(simulator)
    assert code == EXIT_FAILED
    assert "share one failed-login budget" in err  # check's warning about the ten tables


def test_a_daemon_with_ten_tables_naming_one_user_costs_one_failed_login_per_auth_retry(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(ten_tables_one_user(tmp_path, simulator))

    eventually(lambda: len(failed_logins(simulator, GOOD_USER)) >= 2, timeout=FIRST, what="2 tries")

    refused = failed_logins(simulator, GOOD_USER)
    report(
        "promise 1: daemon, 10 tables naming one user",
        failed_logins=len(refused),
        gaps=gaps(refused),
    )
    assert len(refused) == 2, refused  # one login per try, not one per table or per URL
    assert all(gap >= 4.0 - 0.05 for gap in gaps(refused)), gaps(refused)  # auth_retry apart
    assert vicidial_failed_login_count(simulator, GOOD_USER) == 2
    assert never_locked(simulator)
    assert daemon.matching("credentials.suspended", outcome="auth_failed")


# -- 2. unreadable answers count: a slow VICIdial and a changed password ----------------------


def test_a_vicidial_slower_than_the_timeout_with_a_changed_password_costs_at_most_3_failed_logins(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon, run_refreshd: RunRefreshd
) -> None:
    # The PHP refuses the login (VICIdial counts it), then the answer comes after refreshd
    # has given up: to refreshd, five servers timing out, retried every second or two.
    simulator.update_user(GOOD_USER, password=CHANGED_ON_THE_DIALER)
    simulator.set_fault("slow_after_login", delay=3 * TIMEOUT)
    config = write_config(tmp_path, [server(simulator, i) for i in range(5)], backoff=QUICK_RETRIES)
    started = time.monotonic()
    daemon = start_daemon(config)

    eventually(lambda: len(failed_logins(simulator, GOOD_USER)) >= 3, timeout=FIRST, what="3 tries")
    holds_for(
        lambda: len(failed_logins(simulator, GOOD_USER)) <= 3 and never_locked(simulator),
        seconds=5,
        what="no fourth failed login, no lock-out",
    )
    watched = time.monotonic() - started
    code, out, err = run_refreshd(["refresh", "-c", config, "s0"], timeout=FIRST)

    refused = failed_logins(simulator, GOOD_USER)
    report(
        "promise 2: slow_after_login, password changed on the dialer, 5 servers",
        failed_logins=len(refused),
        seconds_watched=round(watched),
        manual_refresh_exit=code,
    )
    assert len(refused) == 3
    assert vicidial_failed_login_count(simulator, GOOD_USER) == 3
    assert never_locked(simulator)
    (paused,) = daemon.matching("credentials.suspended", outcome="transient")
    assert paused["wait"] == "failed_login_budget"
    assert "no readable answer" in paused["reason"]
    # The budget is journaled: a manual refresh right after refuses and spends nothing.
    assert code == EXIT_FAILED
    assert "wait until" in err
    assert "no readable answer" in err
    assert out == ""


# -- 3. gzip answers are read ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["gzip", "gzip_always"])
def test_a_gzipping_web_server_refusing_a_login_costs_one_failed_login(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon, mode: str
) -> None:
    # `gzip` compresses when asked (mod_deflate); `gzip_always` whatever the client asked.
    # s0-s2 log in with a wrong password, s3 (another user) with the right one.
    simulator.set_fault(mode)
    config = write_config(
        tmp_path,
        [server(simulator, i, credentials="wrong") for i in range(3)]
        + [server(simulator, 3, credentials="admin")],
        credentials={
            "wrong": {"user": GOOD_USER, "password": WRONG_PASSWORD},
            "admin": {"user": "admin", "password": "admin1234"},
        },
        backoff={**QUICK_RETRIES, "auth_retry": "1h"},
    )
    daemon = start_daemon(config)

    daemon.wait_for("credentials.suspended", outcome="auth_failed", timeout=FIRST)
    daemon.wait_for("refresh.succeeded", server="s3", timeout=FIRST)
    holds_for(
        lambda: len(failed_logins(simulator, GOOD_USER)) == 1 and len(refreshes(simulator, 3)) == 1,
        seconds=3,
        what="one failed login; one refresh in s3's slot",
    )

    report(
        f"promise 3: {mode}, a wrong password on 3 servers, a right one on a 4th",
        failed_logins=len(failed_logins(simulator, GOOD_USER)),
        refreshes_in_s3_slot=len(refreshes(simulator, 3)),
    )
    assert never_locked(simulator)
    (ok,) = daemon.matching("refresh.succeeded", server="s3")
    assert ok["servers_flagged"] == 2  # the answer's figure, read through the compression
    assert daemon.matching("refresh.retrying", outcome="unexpected") == []


# -- 5. a reload never refreshes a done slot again ------------------------------------------


def test_a_server_removed_and_added_back_by_reloads_is_not_refreshed_again_in_its_slot(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    both = [server(simulator, 0), server(simulator, 1)]
    daemon = start_daemon(write_config(tmp_path, both))
    daemon.wait_for("refresh.succeeded", count=2, timeout=FIRST)

    write_config(tmp_path, both[1:])
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("config.reloaded", count=1)
    write_config(tmp_path, both)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("config.reloaded", count=2)
    holds_for(
        lambda: len(refreshes(simulator, 0)) == 1,
        seconds=3,
        what="s0 refreshed once in its slot",
    )

    report("promise 5: removed and added back by reloads", refreshes=len(refreshes(simulator, 0)))
    assert len(refreshes(simulator, 1)) == 1


def test_a_server_added_by_reload_whose_slot_an_earlier_daemon_did_is_not_refreshed_again(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    both = [server(simulator, 0), server(simulator, 1)]
    first = start_daemon(write_config(tmp_path, both))
    first.wait_for("refresh.succeeded", count=2, timeout=FIRST)
    assert first.stop() == 0

    second = start_daemon(write_config(tmp_path, both[1:]))
    second.wait_for("daemon.started", timeout=FIRST)
    write_config(tmp_path, both)
    second.signal(signal.SIGHUP)
    second.wait_for("config.reloaded")
    holds_for(
        lambda: len(refreshes(simulator, 0)) == 1 and len(refreshes(simulator, 1)) == 1,
        seconds=3,
        what="each slot refreshed once, by the first daemon",
    )

    report(
        "promise 5: added by reload, its slot done by an earlier daemon",
        refreshes=len(refreshes(simulator, 0)),
    )


# -- 8. one total deadline per call, and /healthz -------------------------------------------


def test_a_trickled_head_ends_at_the_deadline_and_the_daemon_goes_on_refreshing_the_others(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    # s0's status line and headers come a byte every 0.5 s: about 75 s for the head, each
    # byte well inside a per-read time-out. s0 is due at once, s1 and s2 from 2 s later; the
    # login is not proven yet, so while s0's call lasts no other server may log in.
    simulator.set_fault("trickle_headers", path=api_path(0))
    later = window_from_now(2, 3600)
    config = write_config(
        tmp_path,
        [
            server(simulator, 0),
            server(simulator, 1, windows=[later], every="2s"),
            server(simulator, 2, windows=[later], every="2s"),
        ],
    )
    daemon = start_daemon(config)

    cut = daemon.wait_for("refresh.retrying", server="s0", timeout=FIRST)[0]
    eventually(
        lambda: len(refreshes(simulator, 1)) >= 3 and len(refreshes(simulator, 2)) >= 3,
        timeout=FIRST,
        what="s1 and s2 refreshed by three runs each",
    )
    assert daemon.stop() == 0  # calls in flight end and are logged: the counts are final

    report(
        "promise 8: trickle_headers on s0; s1, s2 every 2 s",
        s0_call_ms=cut["duration_ms"],
        s1_refreshes=len(refreshes(simulator, 1)),
        s2_refreshes=len(refreshes(simulator, 2)),
    )
    assert cut["outcome"] == "transient"
    assert DEADLINE_MS[0] <= cut["duration_ms"] <= DEADLINE_MS[1], cut
    for index in (1, 2):  # one refresh per run (every 2 s), none repeated
        succeeded = daemon.matching("refresh.succeeded", server=f"s{index}")
        runs = {(line["slot"], line.get("due")) for line in succeeded}
        assert len(refreshes(simulator, index)) == len(succeeded) == len(runs), succeeded
    assert never_locked(simulator)


def test_healthz_stays_200_while_calls_end_at_their_deadlines(
    tmp_path: Path, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    # s0 gets "100 Continue" every 0.2 s and never an answer; s1 refreshes every 2 s (its
    # good logins keep the password proven, so s0's lost answers never spend the budget).
    # A call in flight past timeout + 5 s would make /healthz 503: watch longer than that.
    simulator.set_fault("continue_forever", path=api_path(0))
    config = write_config(
        tmp_path,
        [server(simulator, 0), server(simulator, 1, every="2s")],
        backoff={"retry_initial": "1s", "retry_max": "1s"},
        metrics_listen="127.0.0.1:0",
    )
    daemon = start_daemon(config)
    healthz = f"http://127.0.0.1:{daemon.metrics_port(timeout=FIRST)}/healthz"
    eventually(lambda: calls_on(simulator, api_path(0)) != [], timeout=FIRST, what="s0's call")
    answers: list[int] = []

    def still_healthy() -> bool:
        answers.append(http_get(healthz)[0])
        return answers[-1] == 200

    holds_for(still_healthy, seconds=TIMEOUT + 5 + 2, what="/healthz 200")

    ended = daemon.matching("refresh.retrying", server="s0", outcome="transient")
    report(
        "promise 8: continue_forever on s0, /healthz",
        healthz_200=f"{answers.count(200)} of {len(answers)}",
        s0_calls_ended_ms=[line["duration_ms"] for line in ended],
        s1_refreshes=len(refreshes(simulator, 1)),
    )
    assert len(ended) >= 2, ended
    assert all(DEADLINE_MS[0] <= line["duration_ms"] <= DEADLINE_MS[1] for line in ended), ended
    assert len(refreshes(simulator, 1)) >= 2
    assert never_locked(simulator)

"""Crashes and a broken state file, on the real daemon: kill -9 during a call and during state
writes, then a restart; a corrupt, damaged, unwritable or full state file. The promise under
test (SPEC.md, "A success is recorded before the next slot is planned"): a slot recorded as
refreshed is never refreshed again. A call killed before its answer was recorded may be
repeated once after the restart: delivery is at least once, since VICIdial may have acted
on the killed call."""

from __future__ import annotations

import json
import os
import random
import resource
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from refreshd.clock import system_clock
from refreshd.config import validate_config
from refreshd.logs import get_logger
from refreshd.runner import Runner
from refreshd.scheduler import Scheduler
from refreshd.simulator import API_PATH, Simulator
from refreshd.store import StateStore
from tests.support.config import instant, window_from_now
from tests.support.daemon import EXIT_FAILED, EXIT_OK, DaemonProcess
from tests.support.fleet import FIGURES, Fleet, report
from tests.support.nobody import NobodyDaemon
from tests.support.simulator import api_path, calls_on
from tests.support.store import checkpoint, integrity, query
from tests.support.waiting import eventually, holds_for

pytestmark = pytest.mark.slow


def recorded_successes(path: Path) -> list[tuple[str, str]]:
    """(server, at) of every ok call in the state file, read directly (and quickly)."""
    rows = query(path, "SELECT server, at FROM calls WHERE outcome = 'ok'", read_only=True)
    return [(server, at) for server, at in rows]


def history(fleet: Fleet) -> list[dict[str, Any]]:
    done = fleet.cli("history", "--json", "--limit", "100000")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def most_refreshes(sim: Simulator) -> int:
    """How many times the most refreshed server was refreshed."""
    counts = Counter(c["path"] for c in sim.calls() if c["answer_kind"] == "success")
    return max(counts.values(), default=0)


def successes(sim: Simulator, index: int) -> list[float]:
    return [c["t"] for c in calls_on(sim, api_path(index)) if c["answer_kind"] == "success"]


# --- kill -9 ----------------------------------------------------------------------------------


def test_kill_9_during_a_call_then_a_restart_repeats_the_killed_call_once_and_no_more(
    fleet: Fleet,
) -> None:
    sim = fleet.sim
    # Long enough for the kill to land while the call is on the wire (seen at once below).
    sim.set_fault("latency", path=api_path(0), latency=5.0, count=1)
    fleet.write([fleet.server(0, window_from_now(-2, 600))])
    first = fleet.start()
    first.wait_for("daemon.started")
    # The call is on the wire: VICIdial (the simulator) will carry it out, the daemon will
    # never hear the answer.
    eventually(lambda: sim.stats()["in_flight"] >= 1, what="the call on the wire")
    first.kill()
    killed_at = time.time()
    eventually(
        lambda: len(successes(sim, 0)) == 1,
        what="the simulator finishing the killed call: the refresh did happen",
    )

    second = fleet.start()
    (retried,) = second.wait_for("refresh.succeeded")
    third_start = time.time()
    assert second.stop() == EXIT_OK
    third = fleet.start()
    third.wait_for("daemon.started")
    holds_for(
        lambda: sim.stats()["requests"].get(api_path(0), 0) <= 2,
        seconds=1.5,  # a catch-up would fire at once
        what="no third call once the repeat is recorded",
    )

    assert integrity(fleet.state_path) == "ok"
    assert retried["attempt"] == 1
    assert len(successes(sim, 0)) == 2  # the killed call, then its one repeat
    assert all(t > killed_at for t in successes(sim, 0)[1:])
    assert [c["t"] for c in calls_on(sim, api_path(0)) if c["t"] > third_start] == []
    rows = history(fleet)
    assert [(r["outcome"], r["slot"]) for r in rows] == [("ok", retried["slot"])]
    fleet.audit(third)
    FIGURES["kills"] += 1
    report("kill -9 during a call", simulator_refreshes=2, recorded=1, repeats_after_record=0)


def test_kill_9_during_state_writes_never_loses_a_recorded_slot_nor_refreshes_it_again(
    fleet: Fleet,
) -> None:
    sim = fleet.sim
    count = 300
    window = window_from_now(-2, 600)
    fleet.write(
        [fleet.server(i, window) for i in range(count)],
        daemon={"max_concurrency": 8, "metrics_listen": ""},
    )
    rng = random.Random(5)
    kills = 0
    recorded_before: dict[int, float] = {}
    for round_number in range(5):
        daemon = fleet.start()
        daemon.wait_for("daemon.started")
        if round_number < 4:
            # Every success is one fsynced SQLite transaction: the daemon spends most of
            # its time committing, so a kill in full flow lands in or between writes. The
            # kill comes after a random number of this round's successes, so that work is
            # always left for the next round however fast the machine.
            daemon.wait_for("refresh.succeeded", count=rng.randint(10, 50), timeout=30)
            daemon.kill()
            killed_at = time.time()  # the process has exited: it sends nothing more
            kills += 1
            assert integrity(fleet.state_path) == "ok"
            for server, _ in recorded_successes(fleet.state_path):
                recorded_before.setdefault(int(server[1:]), killed_at)
        else:
            assert len(recorded_before) < count, "every kill must hit a daemon with work left"
            daemon.wait_for("refresh.succeeded", count=count - len(recorded_before), timeout=60)
            holds_for(
                lambda: most_refreshes(sim) <= 2, seconds=1, what="no server refreshed thrice"
            )
            assert daemon.stop() == EXIT_OK

    rows = history(fleet)
    ok_per_server = Counter(row["server"] for row in rows if row["outcome"] == "ok")
    assert set(ok_per_server) == {f"s{i:04d}" for i in range(count)}
    assert set(ok_per_server.values()) == {1}  # one recorded success per slot
    refreshed = [len(successes(sim, i)) for i in range(count)]
    repeated = [i for i, n in enumerate(refreshed) if n > 1]
    assert min(refreshed) == 1
    assert max(refreshed) <= 2
    # Only calls in flight (unrecorded) at a kill are repeated: at most max_concurrency each.
    assert len(repeated) <= kills * 8, repeated
    # And never a server whose success had been recorded before a kill: no call of it
    # reached the simulator after that kill (from the daemons started after it).
    late = [i for i, killed in recorded_before.items() for t in successes(sim, i) if t > killed]
    assert late == [], late
    assert integrity(fleet.state_path) == "ok"
    fleet.audit()
    FIGURES["kills"] += kills
    FIGURES["double refreshes of a recorded slot"] += len(late)
    report(
        "kill -9 during state writes",
        servers=count,
        kills=kills,
        recorded_before_kills=len(recorded_before),
        repeated_unrecorded_calls=len(repeated),
        repeats_of_recorded_slots=len(late),
    )


# --- a broken state file ------------------------------------------------------------------------


def _prepare_state(fleet: Fleet) -> None:
    """A real state file from one daemon run, checkpointed into the main file."""
    fleet.write([fleet.server(0, window_from_now(-2, 600))])
    daemon = fleet.start()
    daemon.wait_for("refresh.succeeded")
    assert daemon.stop() == EXIT_OK
    checkpoint(fleet.state_path)


def test_a_state_file_of_garbage_stops_the_daemon_with_daemon_failed_and_the_fix(
    fleet: Fleet,
) -> None:
    fleet.state_path.parent.mkdir(parents=True)
    fleet.state_path.write_bytes(os.urandom(64 * 1024))
    fleet.write([fleet.server(0, window_from_now(-2, 600))])
    daemon = fleet.start()

    assert daemon.wait(timeout=20) == EXIT_FAILED
    (failed,) = daemon.matching("daemon.failed")
    assert str(fleet.state_path) in failed["error"]
    assert "move it aside" in failed["error"]
    assert fleet.sim.stats()["requests"] == {}
    assert daemon.stderr == ""


def test_garbage_in_the_wal_is_ignored_and_a_done_slot_stays_done(fleet: Fleet) -> None:
    _prepare_state(fleet)
    wal = fleet.state_path.with_name(fleet.state_path.name + "-wal")
    wal.write_bytes(os.urandom(32 * 1024))  # a torn write after a power cut, say

    daemon = fleet.start()
    daemon.wait_for("daemon.started")
    holds_for(
        lambda: len(calls_on(fleet.sim, api_path(0))) <= 1,
        seconds=1.5,  # a catch-up would fire at once
        what="the done slot is not refreshed again",
    )

    assert len(calls_on(fleet.sim, api_path(0))) == 1
    assert daemon.matching("refresh.succeeded") == []
    assert integrity(fleet.state_path) == "ok"
    fleet.audit(daemon)


def test_a_damaged_page_in_the_state_file_stops_the_daemon_with_daemon_failed(
    fleet: Fleet,
) -> None:
    _prepare_state(fleet)
    conn = sqlite3.connect(fleet.state_path)
    (page,) = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'servers'").fetchone()
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with fleet.state_path.open("r+b") as file:
        file.seek((page - 1) * page_size)
        file.write(os.urandom(page_size))

    daemon = fleet.start()
    code = daemon.wait(timeout=20)

    assert code == EXIT_FAILED
    assert "Traceback" not in daemon.stderr, daemon.stderr[-2000:]
    (failed,) = daemon.matching("daemon.failed")
    assert "damaged" in failed["error"]


def test_a_directory_in_place_of_the_state_file_stops_the_daemon_with_daemon_failed(
    fleet: Fleet,
) -> None:
    fleet.state_path.mkdir(parents=True)
    fleet.write([fleet.server(0, window_from_now(-2, 600))])
    daemon = fleet.start()

    assert daemon.wait(timeout=20) == EXIT_FAILED
    (failed,) = daemon.matching("daemon.failed")
    assert str(fleet.state_path) in failed["error"]
    assert fleet.sim.stats()["requests"] == {}
    assert daemon.stderr == ""


def test_a_read_only_state_file_stops_the_daemon_with_daemon_failed(
    fleet: Fleet, shared_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the daemon as another user")
    # root ignores file modes, so the daemon runs as nobody against root's 0644 file.
    fleet.state_path = shared_dir / "state" / "state.db"
    _prepare_state(fleet)
    fleet.state_path.parent.chmod(0o755)  # nobody may enter, not write
    fleet.state_path.chmod(0o644)
    config = fleet.write([fleet.server(0, window_from_now(-2, 600))], path=shared_dir / "r.toml")
    daemon = fleet.adopt(NobodyDaemon(config, env=fleet.env))

    assert daemon.wait(timeout=20) == EXIT_FAILED
    (failed,) = daemon.matching("daemon.failed")
    assert "read-only" in failed["error"]
    assert len(calls_on(fleet.sim, api_path(0))) == 1  # only the first run's


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A file-size limit for the daemon's process, standing in for a full disk."""

    def apply() -> None:
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG like ENOSPC.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_logged_and_never_turns_into_repeated_refreshes(fleet: Fleet) -> None:
    # A state file with the fingerprints written, then a limit at its size: the write-ahead
    # log can take a few commits, then every write fails as on a full disk.
    fleet.write([fleet.server(0, window_from_now(3600, 600))])
    idle = fleet.start()
    idle.wait_for("daemon.started")
    assert idle.stop() == EXIT_OK
    checkpoint(fleet.state_path)
    fleet.write([fleet.server(0, window_from_now(-2, 600), every="1s")])
    limit = _file_size_limit(fleet.state_path.stat().st_size + 4096)
    daemon = fleet.adopt(DaemonProcess(fleet.config_path, env=fleet.env, preexec_fn=limit))

    # The claims live in the state file too: once they cannot be written, no call starts
    # (docs/RELIABILITY.md, "Claims across instances"). The outage is said once, by the
    # part that failed first (the journal or the claims): the claims answering between
    # the journal's failures must not end it and say it again.
    (error,) = daemon.wait_for("state.error", timeout=20)

    def last_success() -> float:
        found = daemon.matching("refresh.succeeded")
        return instant(found[-1]["timestamp"]).timestamp() if found else 0.0

    eventually(
        lambda: time.time() - last_success() > 3,  # every = 1s: 3 s without a call
        timeout=30,
        what="no call once the claims cannot be written",
    )
    assert len(daemon.matching("state.error")) == 1
    # SIGTERM, not kill -9: a call in flight at the kill would reach the simulator without
    # its log line and look like a repeat.
    assert daemon.stop() == EXIT_OK

    assert "disk I/O error" in error["error"]
    assert str(fleet.state_path) in error["error"]
    lines = daemon.matching("refresh.succeeded")
    dues = [line.get("due", line["slot"]) for line in lines]
    refreshed = len(successes(fleet.sim, 0))
    report("full disk", refreshes=refreshed, distinct_runs=len(set(dues)))
    # At least once: a call whose answer was lost (a time-out on a loaded machine) is
    # retried and may reach VICIdial twice; nothing else may repeat a run.
    retries = len(daemon.matching("refresh.retrying"))
    assert len(set(dues)) <= refreshed <= len(set(dues)) + retries, (
        f"{refreshed} refreshes for {len(set(dues))} runs and {retries} retries"
    )


# --- a stop while the timing engine is busy ---------------------------------------------------


def test_a_stop_while_the_timing_engine_is_busy_leaves_no_thread_exception(
    tmp_path: Path,
) -> None:
    config = validate_config(
        {
            "daemon": {"state_path": str(tmp_path / "state.db"), "metrics_listen": ""},
            "credentials": {"a": {"user": "u", "password": "p-w_1"}},
            "servers": [
                {
                    "name": "s",
                    "api_url": f"http://127.0.0.1:9{API_PATH}",
                    "credentials": "a",
                    "windows": ["02:00-03:00"],
                }
            ],
        },
        environ={},
    )
    failures: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)
    try:
        with StateStore(config.daemon.state_path) as store:
            # Without the fix about one stop in nine lost the race (2026-11-30: failed at stops
            # 1, 3, 16, 18 of four runs): sixty miss it less than once in a thousand runs.
            for _ in range(60):
                log = get_logger()
                runner = Runner(config, store=store, clock=system_clock, log=log)
                scheduler = Scheduler(config, runner=runner, clock=system_clock, log=log)
                scheduler.start()
                done = threading.Event()

                def beat(each: Scheduler = scheduler, until: threading.Event = done) -> None:
                    while not until.is_set():  # keep the timing engine busy, as heartbeats do
                        each.loop_beat()

                beating = threading.Thread(target=beat)
                beating.start()
                time.sleep(0.02)
                scheduler.stop(1.0)
                done.set()
                beating.join()
                time.sleep(0.01)
                if failures:
                    break
    finally:
        threading.excepthook = previous
    assert failures == []

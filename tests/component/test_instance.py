"""`lock_holder`: whether a daemon holds a state file's lock, and its pid, seen from another
process's point of view (here, another open file description) without taking the lock."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refreshd.instance import Holder, InstanceLock, lock_holder, lock_path


def test_no_lock_file_means_no_daemon(tmp_path: Path) -> None:
    assert lock_holder(tmp_path / "state.db") == Holder(False, None)


def test_a_held_lock_names_its_holder_and_a_released_one_nobody(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    lock = InstanceLock(state)
    try:
        assert lock_holder(state) == Holder(True, os.getpid())
    finally:
        lock.release()
    assert lock_holder(state) == Holder(False, None)


def test_asking_never_takes_the_lock_a_starting_daemon_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A probe that took the lock, even for a moment, could make a daemon starting at that
    # moment refuse as if another one ran: where /proc/locks exists, no flock at all.
    state = tmp_path / "state.db"
    InstanceLock(state).release()
    taken: list[int] = []
    monkeypatch.setattr(fcntl, "flock", lambda fd, operation: taken.append(operation))

    assert lock_holder(state) == Holder(False, None)
    assert taken == []


def test_the_lock_of_another_process_is_seen_with_that_process_s_pid(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from refreshd.instance import InstanceLock;"
            f"InstanceLock(Path({str(state)!r})); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "held\n"
        assert lock_holder(state) == Holder(True, child.pid)
    finally:
        child.communicate("", timeout=10)
    assert lock_holder(state) == Holder(False, None)


def test_without_proc_locks_a_probe_tells_held_from_free(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    missing = tmp_path / "no-proc-locks"
    lock = InstanceLock(state)
    try:
        # Another open file description of the lock file: flock conflicts across them.
        assert lock_holder(state, proc_locks=missing) == Holder(True, os.getpid())
    finally:
        lock.release()
    assert lock_holder(state, proc_locks=missing) == Holder(False, None)
    assert lock_path(state).exists()

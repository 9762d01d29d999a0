"""The state store, on real SQLite files: round-trips, durability, errors, concurrency."""

from __future__ import annotations

import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from refreshd.core.vicidial import Outcome
from refreshd.state import (
    DETAIL_MAX,
    RUNS_DONE_EXTRA_KEEP,
    SCHEMA_VERSION,
    CallRecord,
    CredentialsWait,
    ServerState,
    StateError,
    StateStore,
    _explain,
)
from tests.support.repo import REPO
from tests.support.state import integrity, query

SLOT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(path: Path) -> Iterator[StateStore]:
    with StateStore(path) as opened:
        yield opened


def record(
    store: StateStore,
    server: str = "east-1",
    *,
    outcome: Outcome = Outcome.OK,
    due: datetime | None = SLOT,
    at: datetime = SLOT,
    attempt: int = 1,
    detail: str | None = None,
    credentials: str | None = None,
) -> CallRecord:
    return store.record_call(
        server=server,
        slot_start=None if due is None else SLOT,
        due=due,
        attempt=attempt,
        outcome=outcome,
        at=at,
        duration_ms=120,
        http_status=200,
        servers_flagged=3 if outcome is Outcome.OK else None,
        detail=detail,
        credentials=credentials,
    )


# -- round-trips ------------------------------------------------------------------------


def test_a_recorded_call_comes_back_from_the_history(store: StateStore) -> None:
    written = record(store, detail="SUCCESS: server_refresh ... |3")
    assert store.history() == [written]
    assert written == CallRecord(
        id=written.id,
        server="east-1",
        slot_start=SLOT,
        due=SLOT,
        attempt=1,
        outcome=Outcome.OK,
        at=SLOT,
        duration_ms=120,
        http_status=200,
        servers_flagged=3,
        detail="SUCCESS: server_refresh ... |3",
    )


def test_times_come_back_aware_utc_whatever_zone_went_in(store: StateStore) -> None:
    new_york = timezone(timedelta(hours=-5))
    record(store, due=SLOT.astimezone(new_york), at=SLOT.astimezone(new_york))
    (call,) = store.history()
    assert call.at == SLOT
    assert call.at.tzinfo is UTC
    assert store.run_done("east-1", SLOT)


def test_naive_datetimes_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        record(store, at=SLOT.replace(tzinfo=None))


def test_a_success_marks_its_run_done_and_sets_last_success(store: StateStore) -> None:
    record(store, due=SLOT + 5 * MIN, at=SLOT + 6 * MIN)
    assert store.run_done("east-1", SLOT + 5 * MIN)
    assert not store.run_done("east-1", SLOT)
    assert not store.run_done("west-1", SLOT + 5 * MIN)
    state = store.server_state("east-1")
    assert state.last_outcome is Outcome.OK
    assert state.last_attempt_at == state.last_success_at == SLOT + 6 * MIN


def test_a_failure_updates_the_last_outcome_but_marks_no_run(store: StateStore) -> None:
    record(store, at=SLOT)
    record(store, outcome=Outcome.TRANSIENT, due=SLOT + 60 * MIN, at=SLOT + 60 * MIN)
    assert not store.run_done("east-1", SLOT + 60 * MIN)
    state = store.server_state("east-1")
    assert state.last_outcome is Outcome.TRANSIENT
    assert state.last_attempt_at == SLOT + 60 * MIN
    assert state.last_success_at == SLOT


def test_a_manual_refresh_without_a_due_marks_no_run(store: StateStore) -> None:
    record(store, due=None, at=SLOT)
    assert store.runs_done_since("east-1", SLOT - 60 * MIN) == set()
    assert store.server_state("east-1").last_success_at == SLOT


def test_a_success_ends_the_servers_suspension(store: StateStore) -> None:
    store.suspend_server("east-1", SLOT + 60 * MIN, 3, "permission_denied")
    record(store, at=SLOT + 61 * MIN)
    state = store.server_state("east-1")
    assert (state.suspended_until, state.suspensions, state.suspension_reason) == (None, 0, None)


def test_runs_done_since_lists_the_due_times_from_since_on(store: StateStore) -> None:
    for minutes in (0, 10, 20):
        record(store, due=SLOT + minutes * MIN)
    record(store, "west-1", due=SLOT + 30 * MIN)
    assert store.runs_done_since("east-1", SLOT + 10 * MIN) == {SLOT + 10 * MIN, SLOT + 20 * MIN}


def test_an_unknown_server_has_an_empty_state(store: StateStore) -> None:
    assert store.server_state("nowhere") == ServerState(
        name="nowhere",
        last_outcome=None,
        last_attempt_at=None,
        last_success_at=None,
        suspended_until=None,
        suspensions=0,
        suspension_reason=None,
        config_fingerprint=None,
    )


def test_suspension_and_fingerprint_round_trip(store: StateStore) -> None:
    store.set_server_fingerprints({"east-1": "sha256:abc"})
    store.suspend_server("east-1", SLOT + 2 * 60 * MIN, 2, "not_found: server IP not found")
    store.suspend_server("west-1", SLOT + 60 * MIN, 1, "bad_request")
    states = store.all_server_states()
    assert list(states) == ["east-1", "west-1"]
    east = states["east-1"]
    assert east.suspended_until == SLOT + 2 * 60 * MIN
    assert east.suspensions == 2
    assert east.suspension_reason == "not_found: server IP not found"
    assert east.config_fingerprint == "sha256:abc"


def test_resuming_keeps_the_suspension_count_unless_told_to_forget(store: StateStore) -> None:
    store.suspend_server("east-1", SLOT + 60 * MIN, 2, "permission_denied")
    store.resume_server("east-1")
    state = store.server_state("east-1")
    assert (state.suspended_until, state.suspension_reason, state.suspensions) == (None, None, 2)
    store.resume_server("east-1", forget_suspensions=True)
    assert store.server_state("east-1").suspensions == 0


def test_credentials_waits_round_trip_and_clear(store: StateStore) -> None:
    assert store.credentials_wait("east") is None
    store.wait_credentials("east", SLOT + 60 * MIN, "auth_failed", "sha256:1")
    store.wait_credentials("east", SLOT + 6 * 60 * MIN, "locked_out", None)
    store.wait_credentials("west", SLOT, "auth_failed", "sha256:2")
    expected = CredentialsWait("east", SLOT + 6 * 60 * MIN, "locked_out", None)
    assert store.credentials_wait("east") == expected
    assert list(store.all_credentials_waits()) == ["east", "west"]
    store.clear_credentials_wait("east")
    assert store.credentials_wait("east") is None
    assert list(store.all_credentials_waits()) == ["west"]


def test_a_success_ends_its_credentials_wait_in_the_same_record(store: StateStore) -> None:
    store.wait_credentials("east", SLOT + 60 * MIN, "auth_failed", "sha256:1")
    store.wait_credentials("west", SLOT + 60 * MIN, "auth_failed", "sha256:2")
    record(store, outcome=Outcome.TRANSIENT, credentials="east")
    assert store.credentials_wait("east") is not None
    record(store, outcome=Outcome.OK, credentials="east")
    assert store.credentials_wait("east") is None
    assert store.credentials_wait("west") is not None


def test_commits_by_another_connection_are_noticed_once_and_its_own_never(
    store: StateStore, path: Path
) -> None:
    assert not store.changed_by_others()
    record(store)
    store.suspend_server("east-1", SLOT + 60 * MIN, 1, "permission_denied")
    assert not store.changed_by_others()  # its own writes
    with StateStore(path) as other:  # what `refreshd refresh` opens
        record(other, "east-2")
    assert store.changed_by_others()
    assert not store.changed_by_others()
    reader = StateStore.open_readonly(path)  # `refreshd status`: reads change nothing
    reader.all_server_states()
    reader.close()
    assert not store.changed_by_others()


def test_long_details_are_cut(store: StateStore) -> None:
    assert record(store, detail="x" * 5000).detail == "x" * DETAIL_MAX
    assert store.history()[0].detail == "x" * DETAIL_MAX


# -- history and pruning ----------------------------------------------------------------


def test_history_is_newest_first_and_filters_by_server_since_and_limit(store: StateStore) -> None:
    for minute in range(6):
        server = "east-1" if minute % 2 == 0 else "west-1"
        record(store, server, outcome=Outcome.TRANSIENT, at=SLOT + minute * MIN, due=SLOT)
    assert [c.at for c in store.history()] == [SLOT + m * MIN for m in (5, 4, 3, 2, 1, 0)]
    east = store.history(server="east-1")
    assert [c.at for c in east] == [SLOT + m * MIN for m in (4, 2, 0)]
    recent = store.history(since=SLOT + 3 * MIN)
    assert [c.at for c in recent] == [SLOT + m * MIN for m in (5, 4, 3)]
    both = store.history(server="west-1", since=SLOT + 2 * MIN, limit=1)
    assert [c.at for c in both] == [SLOT + 5 * MIN]
    assert store.history(limit=0) == []


def test_history_orders_calls_at_the_same_instant_by_insertion(store: StateStore) -> None:
    first = record(store, outcome=Outcome.TRANSIENT, attempt=1)
    second = record(store, outcome=Outcome.OK, attempt=2)
    assert [c.id for c in store.history()] == [second.id, first.id]


def test_prune_forgets_old_calls_and_keeps_done_runs_longer(store: StateStore) -> None:
    day = timedelta(days=1)
    for age_days in (10, 3, 1, 0):
        record(store, due=SLOT - age_days * day, at=SLOT - age_days * day)
    assert store.prune(SLOT - 2 * day) == 2
    assert [c.at for c in store.history()] == [SLOT, SLOT - day]
    assert timedelta(days=1) < RUNS_DONE_EXTRA_KEEP
    assert store.runs_done_since("east-1", SLOT - 30 * day) == {
        SLOT - 3 * day,
        SLOT - day,
        SLOT,
    }


# -- durability and migration -----------------------------------------------------------


def test_a_success_survives_closing_and_reopening(path: Path) -> None:
    first = StateStore(path)
    record(first)
    # A second store sees it before the first is closed: it was committed, not buffered.
    with StateStore(path) as second:
        assert second.run_done("east-1", SLOT)
    first.close()
    with StateStore(path) as third:
        assert third.run_done("east-1", SLOT)


def test_the_file_is_set_up_for_durability(store: StateStore, path: Path) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    pragmas = {
        name: store._conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("synchronous", "foreign_keys", "busy_timeout")
    }
    assert pragmas == {"synchronous": 2, "foreign_keys": 1, "busy_timeout": 5000}


def test_an_empty_file_is_migrated_to_the_current_schema(path: Path) -> None:
    path.parent.mkdir()
    path.touch()
    with StateStore(path) as opened:
        record(opened)
    assert user_version(path) == SCHEMA_VERSION


def test_reopening_a_migrated_file_changes_nothing(path: Path) -> None:
    with StateStore(path) as opened:
        record(opened)
    schema = dump_schema(path)
    with StateStore(path) as reopened:
        assert reopened.run_done("east-1", SLOT)
    assert dump_schema(path) == schema
    assert user_version(path) == SCHEMA_VERSION


def test_a_file_from_a_newer_refreshd_is_refused(path: Path) -> None:
    StateStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StateError, match=r"newer than this refreshd understands") as err:
        StateStore(path)
    assert str(path) in str(err.value)
    with pytest.raises(StateError, match="newer"):
        StateStore.open_readonly(path)


# -- errors -----------------------------------------------------------------------------


def test_a_garbage_file_is_refused_with_the_fix(path: Path) -> None:
    path.parent.mkdir()
    path.write_bytes(b"this is not SQLite " * 500)
    with pytest.raises(StateError) as err:
        StateStore(path)
    message = str(err.value)
    assert str(path) in message
    assert "not a database" in message
    assert "move it aside" in message


def test_a_path_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    with pytest.raises(StateError, match=r"plain is not a directory"):
        StateStore(tmp_path / "plain" / "state.db")


def test_a_directory_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot open"):
        StateStore(tmp_path)


def test_a_read_only_store_refuses_writes(path: Path) -> None:
    StateStore(path).close()
    with StateStore.open_readonly(path) as reader, pytest.raises(StateError, match="read-only"):
        reader.suspend_server("east-1", SLOT, 1, "x")


def test_the_read_only_store_reads_while_the_daemon_writes(store: StateStore, path: Path) -> None:
    record(store)
    with StateStore.open_readonly(path) as reader:
        assert reader.run_done("east-1", SLOT)
        record(store, due=SLOT + MIN)
        assert reader.run_done("east-1", SLOT + MIN)


def test_the_read_only_store_says_when_the_daemon_has_not_run(path: Path) -> None:
    with pytest.raises(StateError, match="the daemon has not run yet"):
        StateStore.open_readonly(path)
    assert not path.exists()


def test_the_file_is_private(store: StateStore, path: Path) -> None:
    record(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    wal = path.with_name(path.name + "-wal")
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (sqlite3.SQLITE_FULL, "disk is full"),
        (sqlite3.SQLITE_IOERR | (3 << 8), "not full and the disk is healthy"),  # IOERR_WRITE
        (sqlite3.SQLITE_READONLY, "write access"),
        (sqlite3.SQLITE_CANTOPEN, "set daemon.state_path"),
        (sqlite3.SQLITE_CORRUPT, "restore it from a backup"),
        (sqlite3.SQLITE_BUSY, "second refreshd"),
    ],
)
def test_each_sqlite_failure_is_explained_with_what_to_do(code: int, fix: str) -> None:
    err = sqlite3.OperationalError("some failure")
    err.sqlite_errorcode = code
    message = _explain(Path("/var/lib/refreshd/state.db"), "record a call", err)
    assert message.startswith(
        "state file /var/lib/refreshd/state.db: cannot record a call: some failure. "
    )
    assert fix in message


# Permissions mean nothing to root, and the tests may run as root (they do in CI), so
# the child opening the file becomes `nobody` first when it is root. It imports what it
# needs before that: the interpreter's own files may not be readable by nobody.
_AS_NOBODY = """
import os, sys
from pathlib import Path
from refreshd.state import StateError, StateStore
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
try:
    StateStore(Path(sys.argv[1])).close()
except StateError as err:
    print(err)
    sys.exit(3)
"""


def open_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_an_unwritable_file_is_refused(shared_dir: Path) -> None:
    path = shared_dir / "state.db"
    StateStore(path).close()
    path.chmod(0o444)
    shared_dir.chmod(0o555)
    done = open_as_nobody(path)
    assert done.returncode == 3, done.stderr
    assert f"state file {path}" in done.stdout
    assert "write access" in done.stdout


def test_an_unwritable_directory_is_refused(shared_dir: Path) -> None:
    shared_dir.chmod(0o555)
    done = open_as_nobody(shared_dir / "sub" / "state.db")
    assert done.returncode == 3, done.stderr
    assert "cannot create it: Permission denied" in done.stdout


_FILL_DISK = """
import resource, signal, sys
from datetime import datetime, timedelta
from pathlib import Path
from refreshd.state import StateError, StateStore
from refreshd.core.vicidial import Outcome
store = StateStore(Path(sys.argv[1]))
# A file-size limit stands in for a full disk: writes past it fail like ENOSPC does.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
slot = datetime.fromisoformat(sys.argv[2])
for i in range(100_000):
    try:
        store.record_call(server="east-1", slot_start=slot, due=slot + timedelta(minutes=i),
                          attempt=1, outcome=Outcome.OK, at=slot, duration_ms=1, detail="x" * 900)
    except StateError as err:
        print(i, err)
        break
"""


def test_a_write_that_fails_for_space_raises_and_leaves_no_partial_record(path: Path) -> None:
    StateStore(path).close()
    done = subprocess.run(
        [sys.executable, "-c", _FILL_DISK, str(path), SLOT.isoformat()],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    failed_at, message = done.stdout.split(" ", 1)
    assert int(failed_at) > 0, "the limit should let a few calls through first"
    assert f"state file {path}: cannot record a call" in message
    assert "file system is not full" in message
    with StateStore(path) as reopened:
        assert len(reopened.history(limit=100_000)) == int(failed_at)
        assert not reopened.run_done("east-1", SLOT + int(failed_at) * MIN)


# -- concurrency and crashes ------------------------------------------------------------


def test_record_call_from_eight_threads_loses_nothing(store: StateStore) -> None:
    per_thread = 40
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                due = SLOT + i * MIN
                record(store, f"server-{n}", due=due, at=due)
                record(store, "shared", outcome=Outcome.TRANSIENT, at=due)
                assert store.run_done(f"server-{n}", due)
        except BaseException as err:  # checked in the main thread: threads swallow errors
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.history(limit=10_000)) == 8 * per_thread * 2
    for n in range(8):
        done = store.runs_done_since(f"server-{n}", SLOT)
        assert done == {SLOT + i * MIN for i in range(per_thread)}
    assert store.server_state("shared").last_outcome is Outcome.TRANSIENT


_RECORD_FOREVER = """
import sys
from datetime import datetime, timedelta
from pathlib import Path
from refreshd.state import StateStore
from refreshd.core.vicidial import Outcome
store = StateStore(Path(sys.argv[1]))
slot = datetime.fromisoformat(sys.argv[2])
for i in range(int(sys.argv[3]), 10**9):
    due = slot + timedelta(minutes=i)
    store.record_call(server="east-1", slot_start=slot, due=due, attempt=1,
                      outcome=Outcome.OK, at=due, duration_ms=1)
    # Printed only once record_call has returned, i.e. after the commit.
    print(i, flush=True)
"""


def test_every_run_reported_done_survives_kill_9(path: Path) -> None:
    StateStore(path).close()
    reported: list[int] = []
    for round_number in range(5):
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RECORD_FOREVER,
                str(path),
                SLOT.isoformat(),
                str(round_number * 100_000),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert child.stdout is not None
        # Kill at a different point each round, with the child mid-loop.
        for _ in range(20 + 37 * round_number):
            reported.append(int(child.stdout.readline()))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        # Lines already in the pipe were printed after their commit: they count too.
        reported.extend(int(line) for line in child.stdout.read().split())
        child.stdout.close()

        with StateStore(path) as reopened:
            done = reopened.runs_done_since("east-1", SLOT)
        missing = {SLOT + i * MIN for i in reported} - done
        assert not missing, f"round {round_number}: {len(missing)} reported runs lost"
        assert integrity(path) == "ok"


# -- helpers ----------------------------------------------------------------------------


def user_version(path: Path) -> int:
    return int(query(path, "PRAGMA user_version")[0][0])


def dump_schema(path: Path) -> list[tuple[str, str]]:
    return [
        (name, sql)
        for name, sql in query(path, "SELECT name, sql FROM sqlite_schema ORDER BY name")
    ]

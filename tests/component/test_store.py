"""The state store, on real SQLite files: round-trips, durability, errors, concurrency.

The store decides nothing: it journals the entries it is given. What a call means (a
success ends a suspension and a login's wait, marks its run done) is the ledger's, so
those tests go through the `Runner`, the one path that settles a call and journals it.
"""

from __future__ import annotations

import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from refreshd.clock import FakeClock
from refreshd.config import Config, validate_config
from refreshd.core.ledger import Ledger, LoginEntry, ServerEntry
from refreshd.core.policy import WaitKind
from refreshd.core.slots import Slot
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.runner import Runner
from refreshd.store import (
    DETAIL_MAX,
    RUNS_DONE_EXTRA_KEEP,
    SCHEMA_VERSION,
    CallRecord,
    CredentialsWait,
    NewCall,
    ServerState,
    StateError,
    StateStore,
    Verification,
)
from refreshd.store.errors import explain
from refreshd.store.schema import MIGRATIONS
from tests.support.repo import REPO
from tests.support.store import integrity, query
from tests.support.stores import ENGINES, Databases, Place
from tests.support.waiting import all_at_once

SLOT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture(params=ENGINES)
def place(request: pytest.FixtureRequest, tmp_path: Path, databases: Databases) -> Iterator[Place]:
    """The store's data on each engine: a new SQLite file, an emptied PostgreSQL and MariaDB
    database."""
    with databases.place(request.param, tmp_path) as found:
        yield found


@pytest.fixture
def store(place: Place) -> StateStore:
    return place.open()


@pytest.fixture
def sqlite_store(path: Path) -> Iterator[StateStore]:
    with StateStore(path) as opened:
        yield opened


def new_call(
    server: str = "east-1",
    *,
    outcome: Outcome = Outcome.OK,
    due: datetime | None = SLOT,
    at: datetime = SLOT,
    attempt: int = 1,
    detail: str | None = None,
) -> NewCall:
    return NewCall(
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
    )


def record(store: StateStore, server: str = "east-1", **call_fields: Any) -> None:
    """Journal one call (`call_fields` as new_call takes them) as the runner would for a
    server with nothing else to remember: its entry, the history row and, for a scheduled
    success, its run done."""
    call = new_call(server, **call_fields)
    ok = call.outcome is Outcome.OK
    entry = ServerEntry(
        last_done=call.due if ok else None,
        last_success_at=call.at if ok else None,
        last_outcome=call.outcome,
        last_attempt_at=call.at,
    )
    store.journal(
        servers={server: entry},
        logins={},
        call=call,
        done=(server, call.due) if ok and call.due is not None else None,
    )


# -- through the runner: what a call changes, journaled in one go ------------------------

FLEET = {"east-1": "east", "west-1": "west"}
"""Servers of the test config, and the credentials each logs in with."""


def fleet_config(state_path: Path) -> Config:
    return validate_config(
        {
            "daemon": {"state_path": str(state_path), "metrics_listen": ""},
            "credentials": {
                name: {"user": f"u_{name}", "password": f"p-{name}-1234"}
                for name in set(FLEET.values())
            },
            "servers": [
                {
                    "name": server,
                    "api_url": "http://127.0.0.1:9/vicidial/non_agent_api.php",
                    "credentials": credentials,
                    "windows": ["02:00-04:00"],
                }
                for server, credentials in FLEET.items()
            ],
        },
        environ={},
    )


class Log:
    """A logger that keeps its lines, as (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, object]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def log(event: str, **fields: object) -> None:
            self.lines.append((level, event, fields))

        return log


class Journals:
    """Counts the store's `journal` calls (each is one transaction), passing them on."""

    def __init__(self, store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, object]] = []
        journal = store.journal

        def counted(**changes: object) -> None:
            self.calls.append(changes)
            journal(**changes)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "journal", counted)


def runner_at(store: StateStore, clock: FakeClock, log: Log) -> Runner:
    return Runner(fleet_config(store.path or Path("state.db")), store=store, clock=clock, log=log)


def settle(
    runner: Runner,
    server: str,
    outcome: Outcome,
    *,
    due: datetime | None = SLOT,
    at: datetime = SLOT,
) -> None:
    """One call of `server` sent at `at` comes back with `outcome`; `due` None: manual."""
    where: dict[str, object] = {}
    if due is not None:
        where = {"slot": Slot(SLOT, SLOT + 120 * MIN), "due": due}
    call = runner.call_for(runner.config.server(server), **where)
    answer = Answer(outcome, "SUCCESS: server_refresh |3" if outcome is Outcome.OK else "no")
    runner.settle(call, Attempt(answer, at, 120))


def reopened(place: Place) -> Ledger:
    """The ledger as another process would read it."""
    with place.open() as other:
        return other.load()


def errors(log: Log) -> list[tuple[str, str, dict[str, object]]]:
    return [line for line in log.lines if line[1] == "state.error"]


# -- round-trips ------------------------------------------------------------------------


def test_a_journaled_call_comes_back_from_the_history(store: StateStore) -> None:
    record(store, detail="SUCCESS: server_refresh ... |3")
    (written,) = store.history()
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


def test_a_journaled_server_entry_comes_back_from_load(store: StateStore) -> None:
    entry = ServerEntry(
        last_done=SLOT + 5 * MIN,
        last_success_at=SLOT - 60 * MIN,
        last_outcome=Outcome.PERMISSION_DENIED,
        last_attempt_at=SLOT + 6 * MIN,
        suspended_until=SLOT + 66 * MIN,
        suspensions=1,
        suspension_reason="permission_denied: server suspended for 1h",
        fingerprint="sha256:abc",
    )
    call = new_call(outcome=Outcome.PERMISSION_DENIED, due=SLOT + 5 * MIN, at=SLOT + 6 * MIN)
    store.journal(servers={"east-1": entry}, logins={}, call=call, done=("east-1", SLOT + 5 * MIN))
    assert store.load() == Ledger({"east-1": entry}, {})
    assert store.load().server("west-1") == ServerEntry()


def test_times_come_back_aware_utc_whatever_zone_went_in(store: StateStore) -> None:
    new_york = timezone(timedelta(hours=-5))
    record(store, due=SLOT.astimezone(new_york), at=SLOT.astimezone(new_york))
    (call,) = store.history()
    assert call.at == SLOT
    assert call.at.tzinfo is UTC
    east = store.load().server("east-1")
    assert (east.last_done, east.last_success_at) == (SLOT, SLOT)
    assert east.last_done is not None
    assert east.last_done.tzinfo is UTC
    assert store.last_runs_done() == {"east-1": SLOT}


NAIVE = SLOT.replace(tzinfo=None)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"call": new_call(at=NAIVE)}, id="call"),
        pytest.param({"done": ("east-1", NAIVE)}, id="done"),
        pytest.param({"servers": {"east-1": ServerEntry(suspended_until=NAIVE)}}, id="server"),
        pytest.param(
            {"logins": {"east": LoginEntry(wait_until=NAIVE, wait_reason="x")}}, id="login"
        ),
    ],
)
def test_naive_datetimes_are_refused_and_nothing_is_written(
    store: StateStore, changes: dict[str, object]
) -> None:
    journal: dict[str, object] = {
        "servers": {"east-1": ServerEntry(last_outcome=Outcome.OK, last_attempt_at=SLOT)},
        "logins": {},
        "call": new_call(),
        "done": ("east-1", SLOT),
        **changes,
    }
    with pytest.raises(ValueError, match="naive"):
        store.journal(**journal)  # type: ignore[arg-type]
    assert store.load() == Ledger({}, {})
    assert store.history() == []


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
    assert store.load().server("nowhere") == ServerEntry()


def test_suspension_and_fingerprint_round_trip(store: StateStore) -> None:
    east = ServerEntry(
        suspended_until=SLOT + 2 * 60 * MIN,
        suspensions=2,
        suspension_reason="not_found: server IP not found",
        fingerprint="sha256:abc",
    )
    west = ServerEntry(suspended_until=SLOT + 60 * MIN, suspensions=1, suspension_reason="bad")
    store.journal(servers={"west-1": west, "east-1": east}, logins={})
    assert list(store.load().servers) == ["east-1", "west-1"]
    assert store.load().server("east-1") == east
    states = store.all_server_states()
    assert list(states) == ["east-1", "west-1"]
    assert states["east-1"] == ServerState(
        name="east-1",
        suspended_until=SLOT + 2 * 60 * MIN,
        suspensions=2,
        suspension_reason="not_found: server IP not found",
        config_fingerprint="sha256:abc",
    )


def test_the_suspension_count_is_kept_apart_from_the_suspension(store: StateStore) -> None:
    # A suspension that ends keeps counting (the next one is longer) until told otherwise.
    suspended = ServerEntry(
        suspended_until=SLOT + 60 * MIN, suspensions=2, suspension_reason="permission_denied"
    )
    store.journal(servers={"east-1": suspended}, logins={})
    store.journal(
        servers={"east-1": replace(suspended, suspended_until=None, suspension_reason=None)},
        logins={},
    )
    state = store.load().server("east-1")
    assert (state.suspended_until, state.suspension_reason, state.suspensions) == (None, None, 2)
    store.journal(servers={"east-1": replace(state, suspensions=0)}, logins={})
    assert store.load().server("east-1").suspensions == 0


def test_credentials_waits_round_trip_and_clear(store: StateStore) -> None:
    assert store.credentials_wait("east") is None
    first = LoginEntry(
        wait_until=SLOT + 60 * MIN, wait_reason="auth_failed", fingerprint="sha256:1"
    )
    longer = LoginEntry(
        wait_until=SLOT + 6 * 60 * MIN, wait_reason="locked_out", wait_kind=WaitKind.LOCKED_OUT
    )
    west = LoginEntry(wait_until=SLOT, wait_reason="auth_failed", fingerprint="sha256:2")
    store.journal(servers={}, logins={"east": first})
    store.journal(servers={}, logins={"east": longer, "west": west})
    assert store.load().logins == {"east": longer, "west": west}
    expected = CredentialsWait(
        "east", SLOT + 6 * 60 * MIN, "locked_out", None, kind=WaitKind.LOCKED_OUT
    )
    assert store.credentials_wait("east") == expected
    assert list(store.all_credentials_waits()) == ["east", "west"]
    store.journal(servers={}, logins={"east": LoginEntry()})  # no wait_until: the wait ends
    assert store.credentials_wait("east") is None
    assert list(store.all_credentials_waits()) == ["west"]
    assert store.load().logins == {"west": west}


def test_what_a_process_knows_of_a_login_now_is_not_journaled(store: StateStore) -> None:
    live = LoginEntry(
        wait_until=SLOT, wait_reason="auth_failed", proven=frozenset({"fp"}), in_flight=2
    )
    store.journal(servers={}, logins={"east": live})
    assert store.load().login("east") == replace(live, proven=frozenset(), in_flight=0)


def test_commits_by_another_connection_are_noticed_once_and_its_own_never(
    store: StateStore, place: Place
) -> None:
    assert not store.changed_by_others()
    record(store)
    store.journal(
        servers={"east-1": ServerEntry(suspended_until=SLOT + 60 * MIN, suspensions=1)},
        logins={"east": LoginEntry(wait_until=SLOT + 60 * MIN, wait_reason="auth_failed")},
    )
    assert not store.changed_by_others()  # its own writes
    with place.open() as other:  # what `refreshd refresh` opens
        record(other, "east-2")
    assert store.changed_by_others()
    assert not store.changed_by_others()
    reader = place.readonly()  # `refreshd status`: reads change nothing
    reader.all_server_states()
    reader.load()
    reader.close()
    assert not store.changed_by_others()


def test_long_details_are_cut(store: StateStore) -> None:
    record(store, detail="x" * 5000)
    assert store.history()[0].detail == "x" * DETAIL_MAX


# -- what a call changes (the ledger's rules), journaled by the runner --------------------


def test_a_success_marks_its_run_done_and_sets_last_success(
    store: StateStore, place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log()
    runner = runner_at(store, FakeClock(SLOT + 6 * MIN), log)
    journals = Journals(store, monkeypatch)
    settle(runner, "east-1", Outcome.OK, due=SLOT + 5 * MIN, at=SLOT + 6 * MIN)
    assert len(journals.calls) == 1
    ledger = reopened(place)
    east = ledger.server("east-1")
    assert east.last_done == SLOT + 5 * MIN
    assert east.last_outcome is Outcome.OK
    assert east.last_attempt_at == east.last_success_at == SLOT + 6 * MIN
    assert ledger.server("west-1").last_done is None
    assert store.last_runs_done() == {"east-1": SLOT + 5 * MIN}
    (call,) = store.history()
    assert (call.server, call.due, call.at, call.outcome) == (
        "east-1",
        SLOT + 5 * MIN,
        SLOT + 6 * MIN,
        Outcome.OK,
    )
    assert errors(log) == []


def test_a_failure_updates_the_last_outcome_but_marks_no_run(
    store: StateStore, place: Place
) -> None:
    log = Log()
    clock = FakeClock(SLOT)
    runner = runner_at(store, clock, log)
    settle(runner, "east-1", Outcome.OK, due=SLOT, at=SLOT)
    clock.set(SLOT + 60 * MIN)
    settle(runner, "east-1", Outcome.TRANSIENT, due=SLOT + 60 * MIN, at=SLOT + 60 * MIN)
    east = reopened(place).server("east-1")
    assert east.last_done == SLOT
    assert east.last_outcome is Outcome.TRANSIENT
    assert east.last_attempt_at == SLOT + 60 * MIN
    assert east.last_success_at == SLOT
    assert store.last_runs_done() == {"east-1": SLOT}
    assert [c.outcome for c in store.history()] == [Outcome.TRANSIENT, Outcome.OK]
    assert errors(log) == []


def test_a_manual_refresh_without_a_due_marks_no_run(store: StateStore, place: Place) -> None:
    log = Log()
    runner = runner_at(store, FakeClock(SLOT), log)
    settle(runner, "east-1", Outcome.OK, due=None, at=SLOT)
    east = reopened(place).server("east-1")
    assert east.last_done is None
    assert east.last_success_at == SLOT
    assert store.last_runs_done() == {}
    (call,) = store.history()
    assert (call.slot_start, call.due) == (None, None)
    assert errors(log) == []


def test_a_success_ends_the_servers_suspension(
    store: StateStore, place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.journal(
        servers={
            "east-1": ServerEntry(
                suspended_until=SLOT + 60 * MIN,
                suspensions=3,
                suspension_reason="permission_denied",
            )
        },
        logins={},
    )
    log = Log()
    runner = runner_at(store, FakeClock(SLOT + 61 * MIN), log)
    journals = Journals(store, monkeypatch)
    settle(runner, "east-1", Outcome.OK, due=SLOT + 61 * MIN, at=SLOT + 61 * MIN)
    assert len(journals.calls) == 1
    state = reopened(place).server("east-1")
    assert (state.suspended_until, state.suspensions, state.suspension_reason) == (None, 0, None)
    assert state.last_done == SLOT + 61 * MIN
    assert errors(log) == []


def test_a_success_ends_its_credentials_wait_in_the_same_record(
    store: StateStore, place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    wait = LoginEntry(wait_until=SLOT + 60 * MIN, wait_reason="auth_failed")
    store.journal(servers={}, logins={"u_east": wait, "u_west": wait})
    log = Log()
    runner = runner_at(store, FakeClock(SLOT), log)
    journals = Journals(store, monkeypatch)
    settle(runner, "east-1", Outcome.TRANSIENT)
    # No readable answer to an unproven login: it may have been a failed login, counted.
    counted = replace(wait, failed_logins=(SLOT,))
    assert reopened(place).logins == {"u_east": counted, "u_west": wait}
    settle(runner, "east-1", Outcome.OK, at=SLOT + MIN)
    # One journal call, one transaction: the success, its done run and the wait's end.
    assert len(journals.calls) == 2
    last = journals.calls[-1]
    password = runner.login_fingerprint("east") or ""
    assert last["logins"] == {"u_east": LoginEntry(proven=frozenset({password}))}
    assert last["done"] == ("east-1", SLOT)
    ledger = reopened(place)
    assert ledger.logins == {"u_west": wait}
    assert ledger.server("east-1").last_success_at == SLOT + MIN
    assert store.credentials_wait("u_east") is None
    assert store.credentials_wait("u_west") is not None
    assert errors(log) == []


def test_a_config_change_ends_the_suspension_and_forgets_its_count(
    store: StateStore, place: Place
) -> None:
    suspended = ServerEntry(
        suspended_until=SLOT + 60 * MIN,
        suspensions=2,
        suspension_reason="permission_denied",
        fingerprint="sha256:before",
    )
    store.journal(servers={"east-1": suspended}, logins={})
    log = Log()
    runner = runner_at(store, FakeClock(SLOT), log)
    runner.configure(runner.config, runner.config.servers, changed_logins=())
    east = reopened(place).server("east-1")
    assert (east.suspended_until, east.suspension_reason, east.suspensions) == (None, None, 0)
    assert east.fingerprint not in (None, "sha256:before")
    assert errors(log) == []


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
    record(store, outcome=Outcome.TRANSIENT, attempt=1)
    record(store, outcome=Outcome.OK, attempt=2)
    newest, oldest = store.history()
    assert (newest.attempt, oldest.attempt) == (2, 1)
    assert newest.id > oldest.id


def test_last_runs_done_holds_each_servers_latest_done_run(store: StateStore) -> None:
    for minutes in (10, 20, 0):  # an older run done late does not hide the latest
        record(store, due=SLOT + minutes * MIN)
    record(store, "west-1", due=SLOT + 30 * MIN)
    assert store.last_runs_done() == {"east-1": SLOT + 20 * MIN, "west-1": SLOT + 30 * MIN}
    assert store.load().server("east-1").last_done == SLOT + 20 * MIN


def test_prune_forgets_old_calls_and_keeps_done_runs_longer(store: StateStore) -> None:
    day = timedelta(days=1)
    ages = (10, 3, 1, 0)
    for age_days in ages:  # one server each: last_runs_done shows every run still kept
        record(store, f"aged-{age_days}", due=SLOT - age_days * day, at=SLOT - age_days * day)
    assert store.prune(SLOT - 2 * day) == 2
    assert [c.at for c in store.history()] == [SLOT, SLOT - day]
    assert timedelta(days=1) < RUNS_DONE_EXTRA_KEEP
    assert store.last_runs_done() == {f"aged-{age}": SLOT - age * day for age in (3, 1, 0)}
    assert store.load().server("aged-10").last_done is None


# -- durability and migration -----------------------------------------------------------


def test_a_success_survives_closing_and_reopening(path: Path) -> None:
    first = StateStore(path)
    record(first)
    # A second store sees it before the first is closed: it was committed, not buffered.
    with StateStore(path) as second:
        assert second.last_runs_done() == {"east-1": SLOT}
    first.close()
    with StateStore(path) as third:
        assert third.load().server("east-1").last_done == SLOT


def test_the_file_is_set_up_for_durability(sqlite_store: StateStore, path: Path) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    pragmas = {}
    with sqlite_store.engine.transaction() as tx:  # the store's own connection
        for name in ("synchronous", "foreign_keys", "busy_timeout"):
            tx.execute(f"PRAGMA {name}")
            pragmas[name] = tx.fetchone()[0]  # type: ignore[index]
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
    with StateStore(path) as reopened_store:
        assert reopened_store.last_runs_done() == {"east-1": SLOT}
    assert dump_schema(path) == schema
    assert user_version(path) == SCHEMA_VERSION


def _a_version_2_file(path: Path) -> None:
    """A file as refreshd with schema 2 left it: one server, last outcome ok."""
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        for statement in (s for migration in MIGRATIONS[:2] for s in migration):
            conn.execute(statement)
        conn.execute("INSERT INTO servers (name, last_outcome) VALUES ('east-1', 'ok')")
        conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_a_version_2_file_keeps_its_servers_and_learns_first_seen_once(path: Path) -> None:
    _a_version_2_file(path)
    first, later = SLOT, SLOT + timedelta(days=3)

    with StateStore(path) as upgraded:
        old = upgraded.load().server("east-1")
        upgraded.journal(servers={"east-1": replace(old, first_seen=first)}, logins={})
        # A one-shot command's entry lacks it, a later one differs: the first stays.
        upgraded.journal(
            servers={"east-1": replace(old, last_outcome=Outcome.TRANSIENT)}, logins={}
        )
        upgraded.journal(servers={"east-1": replace(old, first_seen=later)}, logins={})
        entry = upgraded.load().server("east-1")

    assert old.last_outcome is Outcome.OK
    assert old.first_seen is None
    assert entry.first_seen == first
    assert user_version(path) == SCHEMA_VERSION


def test_a_version_2_file_gains_the_heartbeat_and_keeps_its_state(path: Path) -> None:
    _a_version_2_file(path)

    with StateStore(path) as upgraded:
        assert upgraded.server_state("east-1").last_outcome is Outcome.OK
        assert upgraded.last_beat() is None  # no daemon of this version has beat yet
        upgraded.beat(SLOT)
    assert user_version(path) == SCHEMA_VERSION
    with StateStore.open_readonly(path) as reader:
        assert reader.last_beat() == SLOT


def test_a_version_4_file_keeps_its_calls_and_learns_which_were_applied(path: Path) -> None:
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        for statement in (s for migration in MIGRATIONS[:4] for s in migration):
            conn.execute(statement)
        conn.execute("INSERT INTO servers (name, last_outcome) VALUES ('east-1', 'ok')")
        for at in ("2026-03-02T02:00:00.000000Z", "2026-03-03T02:00:00.000000Z"):
            conn.execute(
                "INSERT INTO calls (server, attempt, outcome, at, duration_ms) "
                "VALUES ('east-1', 1, 'ok', ?, 40)",
                (at,),
            )
        conn.execute("PRAGMA user_version = 4")
    conn.close()
    later = SLOT + timedelta(days=1)

    with StateStore(path) as upgraded:
        assert [r.verification for r in upgraded.history()] == [None, None]
        upgraded.verified("east-1", SLOT, Verification(True, 42.5))
        upgraded.verified("east-1", later, Verification(False, 180.0, "still flagged: dial2"))
        latest = upgraded.last_verifications()
        newest, oldest = upgraded.history()

    assert user_version(path) == SCHEMA_VERSION
    assert oldest.verification == Verification(True, 42.5, None, SLOT)
    assert newest.verification == Verification(False, 180.0, "still flagged: dial2", later)
    assert latest == {"east-1": newest.verification}


def test_the_heartbeat_keeps_only_the_latest_beat(sqlite_store: StateStore, path: Path) -> None:
    sqlite_store.beat(SLOT)
    sqlite_store.beat(SLOT + timedelta(seconds=10))

    assert sqlite_store.last_beat() == SLOT + timedelta(seconds=10)
    assert query(path, "SELECT COUNT(*) FROM daemon") == [(1,)]


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


@pytest.mark.parametrize("readonly", [False, True])
def test_a_state_path_that_is_a_directory_is_called_one(tmp_path: Path, readonly: bool) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    with pytest.raises(StateError) as err:
        StateStore.open_readonly(directory) if readonly else StateStore(directory)
    assert f"state file {directory}: cannot open: it is a directory, not a file" in str(err.value)
    assert f"daemon.state_path to a file in it (e.g. {directory / 'state.db'})" in str(err.value)
    assert "disk" not in str(err.value)


def test_a_read_only_store_refuses_writes(path: Path) -> None:
    StateStore(path).close()
    suspended = ServerEntry(suspended_until=SLOT, suspensions=1, suspension_reason="x")
    with StateStore.open_readonly(path) as reader:
        with pytest.raises(StateError, match="read-only"):
            reader.journal(servers={"east-1": suspended}, logins={}, call=new_call())
        with pytest.raises(StateError, match="read-only"):
            reader.prune(SLOT)
        assert reader.load() == Ledger({}, {})


def test_the_read_only_store_reads_while_the_daemon_writes(store: StateStore, place: Place) -> None:
    record(store)
    with place.readonly() as reader:
        assert reader.last_runs_done() == {"east-1": SLOT}
        record(store, due=SLOT + MIN)
        assert reader.load().server("east-1").last_done == SLOT + MIN


def test_the_read_only_store_says_when_the_daemon_has_not_run(path: Path) -> None:
    with pytest.raises(StateError, match="the daemon has not run yet"):
        StateStore.open_readonly(path)
    assert not path.exists()


def test_the_file_is_private(sqlite_store: StateStore, path: Path) -> None:
    record(sqlite_store)
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
    message = explain(Path("/var/lib/refreshd/state.db"), "record a call", err)
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
from refreshd.store import StateError, StateStore
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
from refreshd.core.ledger import ServerEntry
from refreshd.core.vicidial import Outcome
from refreshd.store import NewCall, StateError, StateStore
store = StateStore(Path(sys.argv[1]))
# A file-size limit stands in for a full disk: writes past it fail like ENOSPC does.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
slot = datetime.fromisoformat(sys.argv[2])
for i in range(100_000):
    due = slot + timedelta(minutes=i)
    entry = ServerEntry(last_done=due, last_success_at=slot, last_outcome=Outcome.OK,
                        last_attempt_at=slot)
    call = NewCall(server="east-1", slot_start=slot, due=due, attempt=1, outcome=Outcome.OK,
                   at=slot, duration_ms=1, detail="x" * 900)
    try:
        store.journal(servers={"east-1": entry}, logins={}, call=call, done=("east-1", due))
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
    with StateStore(path) as reopened_store:
        assert len(reopened_store.history(limit=100_000)) == int(failed_at)
        assert reopened_store.last_runs_done() == {"east-1": SLOT + (int(failed_at) - 1) * MIN}


# -- concurrency and crashes ------------------------------------------------------------


def test_journal_from_eight_threads_loses_nothing(store: StateStore) -> None:
    per_thread = 40

    def worker(n: int) -> None:
        for i in range(per_thread):
            due = SLOT + i * MIN
            record(store, f"server-{n}", due=due, at=due)
            record(store, "shared", outcome=Outcome.TRANSIENT, at=due)
            assert store.load().server(f"server-{n}").last_done == due

    all_at_once(worker, 8)
    assert len(store.history(limit=10_000)) == 8 * per_thread * 2
    last = SLOT + (per_thread - 1) * MIN
    assert store.last_runs_done() == {f"server-{n}": last for n in range(8)}
    for n in range(8):
        dues = {c.due for c in store.history(server=f"server-{n}", limit=10_000)}
        assert dues == {SLOT + i * MIN for i in range(per_thread)}
    assert store.load().server("shared").last_outcome is Outcome.TRANSIENT


_JOURNAL_FOREVER = """
import sys
from datetime import datetime, timedelta
from pathlib import Path
from refreshd.core.ledger import ServerEntry
from refreshd.core.vicidial import Outcome
from refreshd.store import NewCall, StateStore
store = StateStore(Path(sys.argv[1]))
slot = datetime.fromisoformat(sys.argv[2])
for i in range(int(sys.argv[3]), 10**9):
    due = slot + timedelta(minutes=i)
    entry = ServerEntry(last_done=due, last_success_at=due, last_outcome=Outcome.OK,
                        last_attempt_at=due)
    call = NewCall(server="east-1", slot_start=slot, due=due, attempt=1, outcome=Outcome.OK,
                   at=due, duration_ms=1)
    store.journal(servers={"east-1": entry}, logins={}, call=call, done=("east-1", due))
    # Printed only once journal has returned, i.e. after the commit.
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
                _JOURNAL_FOREVER,
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

        with StateStore(path) as reopened_store:
            latest = reopened_store.last_runs_done()["east-1"]
            kept = {c.due for c in reopened_store.history(server="east-1", limit=10**6)}
        # The latest done run covers every earlier one; each run's call row was
        # committed with it, so none of them may be missing either.
        assert latest >= SLOT + max(reported) * MIN, f"round {round_number}: latest run lost"
        missing = {SLOT + i * MIN for i in reported} - kept
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


def test_a_version_5_files_waits_upgrade_as_refused_logins(path: Path) -> None:
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    with conn:
        for statement in (s for migration in MIGRATIONS[:5] for s in migration):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO credentials_waits (name, waiting_until, reason) "
            "VALUES ('main', '2026-03-02T08:00:00.000000Z', 'login refused')"
        )
        conn.execute("PRAGMA user_version = 5")
    conn.close()

    with StateStore(path) as upgraded:
        entry = upgraded.load().login("main")

    assert user_version(path) == SCHEMA_VERSION
    assert entry.wait_kind is WaitKind.REFUSED_LOGIN
    assert entry.wait_reason == "login refused"


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_file_at_every_older_version_migrates_and_notices_other_writers(
    path: Path, version: int
) -> None:
    """Whatever version a file was left at, it reaches this one, keeps its servers, and the
    change counter (new in version 7) tells another process's writes from its own."""
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        for statement in (s for migration in MIGRATIONS[:version] for s in migration):
            conn.execute(statement)
        conn.execute("INSERT INTO servers (name, last_outcome) VALUES ('east-1', 'ok')")
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()

    with StateStore(path) as upgraded, StateStore(path) as other:
        assert upgraded.server_state("east-1").last_outcome is Outcome.OK
        assert not upgraded.changed_by_others()
        record(upgraded, "east-1")
        assert not upgraded.changed_by_others()
        record(other, "east-2")
        assert upgraded.changed_by_others()
    assert user_version(path) == SCHEMA_VERSION
    assert integrity(path) == "ok"

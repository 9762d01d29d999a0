"""refreshd.runner.Runner.settle: for each call outcome, the events it logs (captured as dicts
by structlog.testing.capture_logs), the ledger it leaves and the rows it journals in a real
state store. The runner's clock is a FakeClock set to the call's time."""

from __future__ import annotations

import random
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from refreshd.clock import FakeClock
from refreshd.config import Config, validate_config
from refreshd.core.ledger import LoginEntry, ServerEntry
from refreshd.core.policy import LOCKOUT_WAIT, Action, Backoff, Decision
from refreshd.core.slots import Slot
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.runner import Runner, runner_for
from refreshd.store import StateStore
from tests.support.stores import ENGINES, Databases

SERVER = "east-1"
CREDENTIALS = "east"
LOGIN = "refreshd"  # the ledger keys a login by its VICIdial user
SLOT = Slot(
    start=datetime(2027, 1, 5, 2, 0, tzinfo=UTC),
    end=datetime(2027, 1, 5, 4, 0, tzinfo=UTC),
)
NOW = SLOT.start + timedelta(seconds=10)
BACKOFF = Backoff(
    retry_initial=timedelta(seconds=30),
    retry_max=timedelta(minutes=10),
    suspend_initial=timedelta(hours=1),
    suspend_max=timedelta(hours=24),
    auth_retry=timedelta(hours=6),
)

SUCCESS = Answer(
    Outcome.OK, "SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - refreshd|2", 200, 2
)
HTTP_500 = Answer(Outcome.TRANSIENT, "HTTP 500: Internal Server Error", 500)
NO_PERMISSION = Answer(
    Outcome.PERMISSION_DENIED,
    "ERROR: server_refresh USER DOES NOT HAVE PERMISSION TO REFRESH SERVERS: |noapi|0",
    200,
)
LOGIN_INCORRECT = Answer(
    Outcome.AUTH_FAILED, "ERROR: Login incorrect, please try again: |refreshd|***|BAD|", 200
)
LOCKED = Answer(
    Outcome.LOCKED_OUT, "ERROR: Too many login attempts, try again in 15 minutes: |x|LOCK|", 200
)
INVALID_SOURCE = Answer(Outcome.BAD_REQUEST, "ERROR: Invalid Source - x", 200)


CONFIG = validate_config(
    {
        "daemon": {"state_path": "/nonexistent/state.db", "metrics_listen": ""},
        "credentials": {CREDENTIALS: {"user": "refreshd", "password": "demo-pass-123"}},
        "servers": [
            {
                "name": SERVER,
                "api_url": "http://127.0.0.1:9/vicidial/non_agent_api.php",
                "credentials": CREDENTIALS,
                "windows": ["02:00-04:00"],
            }
        ],
    },
    environ={},
)


@pytest.fixture(params=ENGINES)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, databases: Databases
) -> Iterator[StateStore]:
    """The journal on each engine: a SQLite file, an emptied PostgreSQL and MariaDB database."""
    with databases.place(request.param, tmp_path) as place:
        yield place.open()


def runner(store: StateStore | None, *, at: datetime = NOW, backoff: Backoff = BACKOFF) -> Runner:
    """A runner on `store` (its ledger as journaled), its clock at `at`."""
    config: Config = CONFIG
    if backoff != BACKOFF:
        settings = {
            name: getattr(backoff, name)
            for name in ("retry_initial", "retry_max", "suspend_initial", "suspend_max")
        }
        config = CONFIG.model_copy(
            update={
                "backoff": CONFIG.backoff.model_copy(
                    update={**settings, "auth_retry": backoff.auth_retry}
                )
            }
        )
    made = runner_for(config, store=store, clock=FakeClock(at), log=structlog.get_logger())
    made._rng = random.Random(7)
    return made


def context(
    *, attempt: int = 1, retry_until: datetime | None = SLOT.end, scheduled: bool = True
) -> dict[str, Any]:
    """Where the call belongs: a scheduled run of SLOT, or a manual refresh."""
    if not scheduled:  # a manual `refreshd refresh`
        return {}
    return {"attempt": attempt, "slot": SLOT, "due": SLOT.start, "retry_until": retry_until}


def record(
    store: StateStore | None,
    answer: Answer,
    *,
    ctx: dict[str, Any] | None = None,
    at: datetime = NOW,
    on: Runner | None = None,
    backoff: Backoff = BACKOFF,
) -> tuple[Decision, list[MutableMapping[str, Any]]]:
    """Settle one call of `answer` sent at `at` (the runner's clock reads `at` too)."""
    with capture_logs() as logs:
        settling = on or runner(store, at=at, backoff=backoff)
        call = settling.call_for(CONFIG.server(SERVER), **(context() if ctx is None else ctx))
        decision = settling.settle(call, Attempt(answer, at, 42))
    return decision, logs


def suspend(store: StateStore, until: datetime, suspensions: int = 1) -> None:
    entry = ServerEntry(
        suspended_until=until, suspensions=suspensions, suspension_reason="permission_denied"
    )
    store.journal(servers={SERVER: entry}, logins={})


def fingerprint() -> str | None:
    return runner(None).login_fingerprint(CREDENTIALS)


def events(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [line["event"] for line in logs]


def only(logs: list[MutableMapping[str, Any]], event: str) -> MutableMapping[str, Any]:
    (line,) = [line for line in logs if line["event"] == event]
    return line


# -- ok ---------------------------------------------------------------------------------------


def test_ok_logs_refresh_succeeded_with_servers_flagged(store: StateStore) -> None:
    decision, logs = record(store, SUCCESS)

    assert decision.action is Action.DONE
    assert events(logs) == ["refresh.succeeded"]
    line = only(logs, "refresh.succeeded")
    assert line["log_level"] == "info"
    assert line["server"] == SERVER
    assert line["outcome"] == "ok"
    assert line["attempt"] == 1
    assert line["duration_ms"] == 42
    assert line["slot"] == SLOT.start
    assert line["trigger"] == "schedule"
    assert line["servers_flagged"] == 2
    assert line["http_status"] == 200
    assert "due" not in line  # the run is due at the slot's start


def test_ok_writes_a_history_row_and_marks_the_run_done(store: StateStore) -> None:
    record(store, SUCCESS)

    (row,) = store.history()
    assert (row.server, row.outcome, row.attempt, row.at) == (SERVER, Outcome.OK, 1, NOW)
    assert (row.slot_start, row.due, row.duration_ms) == (SLOT.start, SLOT.start, 42)
    assert (row.http_status, row.servers_flagged) == (200, 2)
    entry = store.load().server(SERVER)
    assert entry.last_done == SLOT.start
    assert entry.last_outcome is Outcome.OK
    assert entry.last_success_at == NOW


def test_a_later_run_of_the_slot_is_logged_with_its_due(store: StateStore) -> None:
    due = SLOT.start + timedelta(hours=1)
    ctx = {"slot": SLOT, "due": due, "retry_until": SLOT.end}

    _, logs = record(store, SUCCESS, ctx=ctx, at=due)

    assert only(logs, "refresh.succeeded")["due"] == due
    assert store.load().server(SERVER).last_done == due


def test_ok_ends_a_credentials_wait_in_the_store_and_the_ledger(store: StateStore) -> None:
    wait = LoginEntry(NOW + timedelta(hours=1), "login refused", fingerprint())
    store.journal(servers={}, logins={LOGIN: wait})
    settling = runner(store)
    assert settling.waiting(LOGIN, NOW) == NOW + timedelta(hours=1)

    _, logs = record(store, SUCCESS, ctx={}, on=settling)

    assert store.credentials_wait(LOGIN) is None
    assert settling.waiting(LOGIN, NOW) is None
    assert only(logs, "credentials.resumed")["credentials"] == CREDENTIALS


def test_a_success_during_a_suspension_logs_server_resumed(store: StateStore) -> None:
    suspend(store, NOW + timedelta(hours=1))

    _, logs = record(store, SUCCESS, ctx=context(scheduled=False))  # an operator's refresh

    assert events(logs) == ["refresh.succeeded", "server.resumed"]
    assert only(logs, "server.resumed")["server"] == SERVER
    state = store.server_state(SERVER)
    assert (state.suspended_until, state.suspensions, state.suspension_reason) == (None, 0, None)


def test_a_success_right_after_a_suspension_ran_out_logs_server_resumed(
    store: StateStore,
) -> None:
    until = NOW - timedelta(milliseconds=5)  # the daemon fires at the suspension's end
    suspend(store, until)

    _, logs = record(store, SUCCESS)

    assert events(logs) == ["refresh.succeeded", "server.resumed"]


# -- transient and unexpected ------------------------------------------------------------------


def test_a_transient_failure_with_time_left_logs_refresh_retrying_with_retry_at(
    store: StateStore,
) -> None:
    decision, logs = record(store, HTTP_500)

    assert decision.action is Action.RETRY
    assert events(logs) == ["refresh.retrying"]
    line = only(logs, "refresh.retrying")
    assert line["log_level"] == "warning"
    assert line["retry_at"] == decision.at
    assert NOW + timedelta(seconds=1) <= line["retry_at"] <= NOW + BACKOFF.retry_initial
    assert (line["outcome"], line["http_status"], line["attempt"]) == ("transient", 500, 1)
    assert line["detail"] == HTTP_500.detail
    (row,) = store.history()
    assert (row.outcome, row.http_status, row.detail) == (Outcome.TRANSIENT, 500, HTTP_500.detail)
    assert store.load().server(SERVER).last_done is None


def test_an_unexpected_answer_is_retried_with_its_detail_in_the_log(store: StateStore) -> None:
    answer = Answer(Outcome.UNEXPECTED, "<html>Database Error</html>", 200)

    decision, logs = record(store, answer)

    assert decision.action is Action.RETRY
    line = only(logs, "refresh.retrying")
    assert (line["outcome"], line["detail"]) == ("unexpected", "<html>Database Error</html>")


def test_a_transient_failure_with_no_retry_left_logs_refresh_failed(
    store: StateStore,
) -> None:
    # slot.missed is the scheduler's: only it knows whether the slot goes on (a later
    # repeat) or had a success earlier (tests/process/test_daemon.py covers it).
    ctx = context(attempt=5, retry_until=NOW + timedelta(milliseconds=500))

    decision, logs = record(store, HTTP_500, ctx=ctx)

    assert decision.action is Action.GIVE_UP
    assert events(logs) == ["refresh.failed"]
    failed = only(logs, "refresh.failed")
    assert (failed["outcome"], failed["attempt"], failed["log_level"]) == ("transient", 5, "error")
    assert failed["reason"] == decision.reason
    assert store.history()[0].attempt == 5


def test_a_failed_manual_refresh_is_not_retried_nor_a_missed_slot(store: StateStore) -> None:
    decision, logs = record(store, HTTP_500, ctx=context(scheduled=False))

    assert decision.action is Action.GIVE_UP
    assert events(logs) == ["refresh.failed"]
    line = only(logs, "refresh.failed")
    assert line["trigger"] == "manual"
    (row,) = store.history()
    assert (row.slot_start, row.due) == (None, None)


# -- suspensions ------------------------------------------------------------------------------


def test_permission_denied_logs_refresh_failed_and_server_suspended(store: StateStore) -> None:
    decision, logs = record(store, NO_PERMISSION)

    assert decision.action is Action.SUSPEND_SERVER
    assert events(logs) == ["refresh.failed", "server.suspended"]
    assert only(logs, "refresh.failed")["outcome"] == "permission_denied"
    suspended = only(logs, "server.suspended")
    assert suspended["server"] == SERVER
    assert suspended["outcome"] == "permission_denied"
    assert suspended["suspended_until"] == NOW + BACKOFF.suspend_initial
    assert suspended["suspensions"] == 1
    assert suspended["log_level"] == "warning"


def test_permission_denied_suspends_the_server_in_the_store(store: StateStore) -> None:
    record(store, NO_PERMISSION)

    state = store.server_state(SERVER)
    assert state.suspended_until == NOW + BACKOFF.suspend_initial
    assert state.suspensions == 1
    assert state.suspension_reason is not None
    assert "permission_denied" in state.suspension_reason
    assert state.last_outcome is Outcome.PERMISSION_DENIED


def test_a_second_suspension_in_a_row_lasts_twice_as_long(store: StateStore) -> None:
    record(store, NO_PERMISSION)
    later = NOW + BACKOFF.suspend_initial

    _, logs = record(store, NO_PERMISSION, at=later)

    suspended = only(logs, "server.suspended")
    assert suspended["suspended_until"] == later + 2 * BACKOFF.suspend_initial
    assert suspended["suspensions"] == 2
    assert store.server_state(SERVER).suspended_until == later + 2 * BACKOFF.suspend_initial


def test_bad_request_is_logged_as_a_configuration_error(store: StateStore) -> None:
    decision, logs = record(store, INVALID_SOURCE)

    assert decision.action is Action.SUSPEND_SERVER
    assert events(logs) == ["refresh.failed", "server.suspended"]
    failed = only(logs, "refresh.failed")
    assert failed["outcome"] == "bad_request"
    assert "source" in failed["config_error"]
    assert "api_url" in failed["config_error"]


def test_only_bad_request_carries_config_error(store: StateStore) -> None:
    _, logs = record(store, NO_PERMISSION)

    assert "config_error" not in only(logs, "refresh.failed")


# -- credentials ------------------------------------------------------------------------------


def test_auth_failed_logs_refresh_failed_and_credentials_suspended(store: StateStore) -> None:
    decision, logs = record(store, LOGIN_INCORRECT)

    assert decision.action is Action.WAIT_CREDENTIALS
    assert events(logs) == ["refresh.failed", "credentials.suspended"]
    assert only(logs, "refresh.failed")["outcome"] == "auth_failed"
    line = only(logs, "credentials.suspended")
    assert line["credentials"] == CREDENTIALS
    assert line["server"] == SERVER
    assert line["outcome"] == "auth_failed"
    assert line["suspended_until"] == NOW + BACKOFF.auth_retry


def test_auth_failed_writes_a_credentials_wait_and_closes_the_gate(store: StateStore) -> None:
    settling = runner(store)

    record(store, LOGIN_INCORRECT, on=settling)

    wait = store.credentials_wait(LOGIN)
    assert wait is not None
    assert (wait.until, wait.fingerprint) == (NOW + BACKOFF.auth_retry, fingerprint())
    assert "auth_retry" in wait.reason
    assert settling.waiting(LOGIN, NOW) == NOW + BACKOFF.auth_retry
    assert not settling.try_start(LOGIN, fingerprint() or "", NOW + timedelta(minutes=1))
    assert store.server_state(SERVER).suspended_until is None  # the login, not the server


def test_locked_out_waits_at_least_the_lock_out_plus_a_margin(store: StateStore) -> None:
    short = Backoff(auth_retry=timedelta(minutes=5))

    _, logs = record(store, LOCKED, backoff=short)

    line = only(logs, "credentials.suspended")
    assert line["outcome"] == "locked_out"
    assert line["suspended_until"] == NOW + LOCKOUT_WAIT
    wait = store.credentials_wait(LOGIN)
    assert wait is not None
    assert wait.until == NOW + LOCKOUT_WAIT


# -- the state store failing ------------------------------------------------------------------


def test_a_state_error_is_logged_as_state_error_and_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    with StateStore.open_readonly(path) as readonly:  # every write raises StateError
        decision, logs = record(readonly, SUCCESS)

    assert decision.action is Action.DONE
    error = only(logs, "state.error")  # the store's outage, said once
    assert error["log_level"] == "error"
    assert str(path) in error["error"]
    unrecorded = only(logs, "refresh.unrecorded")  # and the call whose record it lost
    assert (unrecorded["log_level"], unrecorded["server"]) == ("error", SERVER)
    assert unrecorded["outcome"] == "ok"
    assert str(path) in unrecorded["error"]
    assert "refresh.succeeded" in events(logs)


def test_without_a_store_the_outcome_is_still_logged() -> None:
    decision, logs = record(None, NO_PERMISSION)

    assert decision.action is Action.SUSPEND_SERVER
    assert events(logs) == ["refresh.failed", "server.suspended"]


def test_a_wait_kept_under_a_tables_name_by_an_older_refreshd_moves_to_its_user(
    store: StateStore,
) -> None:
    wait = LoginEntry(NOW + timedelta(hours=1), "login refused", fingerprint())
    store.journal(servers={}, logins={CREDENTIALS: wait})

    settling = runner(store)

    assert settling.waiting(LOGIN, NOW) == NOW + timedelta(hours=1)
    assert store.credentials_wait(CREDENTIALS) is None
    stored = store.credentials_wait(LOGIN)
    assert stored is not None
    assert stored.until == NOW + timedelta(hours=1)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_state_file_deleted_or_replaced_under_the_runner_is_written_out_again(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        settling = runner(store)
        record(store, SUCCESS, on=settling)  # the slot's run is done
        record(store, LOGIN_INCORRECT, ctx={}, on=settling)  # and the user waits
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            StateStore(path).close()  # an empty file where ours was

        with capture_logs() as logs:
            settling.check_store()
            settling.check_store()  # the new file is ours: nothing more to do

        (error,) = [line for line in logs if line["event"] == "state.error"]
        assert how in error["error"]
        assert [line["event"] for line in logs].count("state.restored") == 1
        assert settling.store is not store
        assert settling.store is not None
        settling.store.close()
    with StateStore(path) as reopened:
        ledger = reopened.load()
    assert ledger.server(SERVER).last_done == SLOT.start
    assert ledger.login(LOGIN).wait_until == NOW + BACKOFF.auth_retry

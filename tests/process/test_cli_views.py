"""`refreshd plan`, `status` and `history` as an operator runs them: the real command in a
subprocess, its exit code, its JSON documents (README "JSON shapes") and its aligned tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from refreshd.core.vicidial import Outcome
from refreshd.simulator import Simulator
from refreshd.store import NewCall, StateStore
from tests.support.config import (
    GOOD_PASSWORD,
    GOOD_USER,
    WriteConfig,
    instant,
    window_from_now,
    write_daemon_config,
)
from tests.support.daemon import DaemonProcess, RunRefreshd

WRONG_PASSWORD = "Wr0ngSecret7qX"  # letters and digits: the simulator echoes it back as is
API_URL = "https://dialer.example.com/vicidial/non_agent_api.php"  # plan never calls it

PLAN_KEYS = {"from", "count", "servers"}
PLAN_SERVER_KEYS = {"server", "timezone", "runs"}
PLAN_RUN_KEYS = {"due", "due_local", "slot_start", "slot_start_local", "slot_end", "slot_end_local"}
STATUS_KEYS = {"at", "servers"}
STATUS_SERVER_KEYS = {
    "server",
    "last_outcome",
    "last_attempt_at",
    "last_success_at",
    "next_run",
    "next_slot",
    "suspended_until",
    "suspension_reason",
    "credentials",
    "credentials_wait_until",
    "credentials_wait_reason",
}
HISTORY_KEYS = {
    "at",
    "server",
    "outcome",
    "attempt",
    "duration_ms",
    "slot",
    "due",
    "http_status",
    "servers_flagged",
    "detail",
}
OUTCOMES = {str(outcome) for outcome in Outcome}

PLAN_HEADERS = ["SERVER", "DUE (LOCAL)", "SLOT START", "SLOT END"]
STATUS_HEADERS = ["SERVER", "LAST", "LAST CALL", "LAST SUCCESS", "NEXT RUN", "HELD"]
HISTORY_HEADERS = ["AT", "SERVER", "OUTCOME", "TRY", "MS", "DETAIL"]


# -- helpers ---------------------------------------------------------------------------------


def plan_config(tmp_path: Path, *servers: tuple[str, str, str]) -> Path:
    """A config of (name, time zone, window) servers; plan reads nothing else."""
    return write_daemon_config(
        tmp_path / "plan.toml",
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": ""},
        credentials={"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        servers=[
            {
                "name": name,
                "api_url": API_URL,
                "credentials": "main",
                "timezone": zone,
                "windows": [window],
            }
            for name, zone, window in servers
        ],
    )


def run_ok(run: RunRefreshd, args: Sequence[str | Path]) -> str:
    code, out, err = run(args, timeout=30)
    assert code == 0, err
    return out


def plan(run: RunRefreshd, config: Path, *args: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(run_ok(run, ["plan", "-c", config, "--json", *args]))
    return document


def runs_of(document: dict[str, Any], name: str) -> list[dict[str, str]]:
    (entry,) = [entry for entry in document["servers"] if entry["server"] == name]
    runs: list[dict[str, str]] = entry["runs"]
    return runs


def history(run: RunRefreshd, config: Path, *args: str) -> list[dict[str, Any]]:
    out = run_ok(run, ["history", "-c", config, "--json", *args])
    return [json.loads(line) for line in out.splitlines()]


def status(run: RunRefreshd, config: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(run_ok(run, ["status", "-c", config, "--json"]))
    return document


def assert_aligned(out: str, headers: list[str], rows: int) -> list[list[str]]:
    """The output is a header line of `headers` and `rows` lines whose cells start in the
    header's columns, two spaces at least between columns; returns the cells."""
    header, *lines = out.splitlines()
    assert len(lines) == rows, out
    starts = [header.index(name) for name in headers]
    assert starts == sorted(starts), header
    assert header.split() == " ".join(headers).split(), header
    cells = []
    for line in [header, *lines]:
        row = []
        for index, start in enumerate(starts):
            last = index + 1 == len(starts)
            if last and len(line) <= start:  # an empty last cell: trailing spaces stripped
                row.append("")
                continue
            end = len(line) if last else starts[index + 1]
            if index:
                assert line[start - 2 : start] == "  ", f"column {headers[index]} in {line!r}"
            cell = line[start:end]
            assert cell[:1] not in ("", " "), f"column {headers[index]} in {line!r}"
            row.append(cell.strip())
        cells.append(row)
    return cells[1:]


# -- plan ------------------------------------------------------------------------------------


def test_plan_moves_a_start_in_the_spring_forward_gap_to_the_first_instant_after_it(
    tmp_path: Path, run_refreshd: RunRefreshd
) -> None:
    config = plan_config(tmp_path, ("ny", "America/New_York", "02:30-03:30"))

    document = plan(run_refreshd, config, "--from", "2027-03-14T00:00:00-05:00", "--count", "1")

    assert set(document) == PLAN_KEYS
    assert document["from"] == "2027-03-14T05:00:00Z"
    assert document["count"] == 1
    (entry,) = document["servers"]
    assert set(entry) == PLAN_SERVER_KEYS
    assert entry["timezone"] == "America/New_York"
    (run,) = entry["runs"]
    assert set(run) == PLAN_RUN_KEYS
    assert run["slot_start_local"] == "2027-03-14T03:00:00-04:00"
    assert run["slot_start"] == "2027-03-14T07:00:00Z"
    assert run["due"] == "2027-03-14T07:00:00Z"
    assert run["due_local"] == "2027-03-14T03:00:00-04:00"
    assert run["slot_end_local"] == "2027-03-14T03:30:00-04:00"


def test_plan_gives_one_slot_on_the_fall_back_day(
    tmp_path: Path, run_refreshd: RunRefreshd
) -> None:
    config = plan_config(tmp_path, ("ny", "America/New_York", "01:30-02:30"))

    document = plan(run_refreshd, config, "--from", "2027-11-07T00:00:00-04:00", "--count", "3")

    runs = runs_of(document, "ny")
    on_the_day = [run for run in runs if run["slot_start_local"].startswith("2027-11-07")]
    assert len(on_the_day) == 1, runs
    (run,) = on_the_day
    # The window covers every 01:30-02:30 reading of the day: both 01:30s (EDT, then EST).
    assert run["slot_start_local"] == "2027-11-07T01:30:00-04:00"
    assert run["slot_end_local"] == "2027-11-07T02:30:00-05:00"
    assert [run["slot_start_local"][:10] for run in runs] == [
        "2027-11-07",
        "2027-11-08",
        "2027-11-09",
    ]


def test_plan_shows_count_runs_per_server(tmp_path: Path, run_refreshd: RunRefreshd) -> None:
    config = plan_config(
        tmp_path,
        ("east-1", "America/New_York", "02:00-04:00"),
        ("west-1", "America/Los_Angeles", "mon-fri 01:00-02:00"),
    )

    document = plan(run_refreshd, config, "--from", "2027-01-04T00:00:00Z", "--count", "5")
    table = run_ok(
        run_refreshd, ["plan", "-c", config, "--from", "2027-01-04T00:00:00Z", "--count", "5"]
    )

    assert document["count"] == 5
    assert [len(entry["runs"]) for entry in document["servers"]] == [5, 5]
    dues = [instant(run["due"]) for run in runs_of(document, "west-1")]
    assert dues == sorted(dues)
    assert all(due.astimezone(UTC).weekday() < 5 for due in dues)  # 09:00Z on mon-fri
    rows = assert_aligned(table, PLAN_HEADERS, rows=10)
    assert [row[0] for row in rows] == ["east-1"] * 5 + ["west-1"] * 5


def test_plan_human_output_is_aligned_columns_under_a_header(
    tmp_path: Path, run_refreshd: RunRefreshd
) -> None:
    config = plan_config(
        tmp_path,
        ("a", "UTC", "02:00-04:00"),
        ("a-much-longer-server-name", "Asia/Kolkata", "23:30-00:30"),
    )

    out = run_ok(
        run_refreshd, ["plan", "-c", config, "--from", "2027-01-04T00:00:00Z", "--count", "2"]
    )

    rows = assert_aligned(out, PLAN_HEADERS, rows=4)
    assert rows[0] == [
        "a",
        "2027-01-04T02:00:00Z",
        "2027-01-04T02:00:00Z",
        "2027-01-04T04:00:00Z",
    ]
    assert rows[2][1] == "2027-01-04T23:30:00+05:30"


def test_plan_refuses_a_bad_from_with_exit_2_and_says_why(
    tmp_path: Path, run_refreshd: RunRefreshd
) -> None:
    config = plan_config(tmp_path, ("ny", "America/New_York", "02:30-03:30"))

    code, out, err = run_refreshd(["plan", "-c", config, "--from", "next tuesday"])

    assert code == 2
    assert out == ""
    assert "--from" in err
    assert "'next tuesday' is not an ISO 8601 instant" in err
    assert "Traceback" not in err


# -- status ----------------------------------------------------------------------------------


def test_status_before_any_run_says_there_is_no_state_yet_and_exits_0(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd, state_path: Path
) -> None:
    config = write_config({"name": "east-1"})

    code, out, err = run_refreshd(["status", "-c", config])

    assert code == 0, err
    assert "no state file" in err
    assert "has not run" in err
    assert not state_path.exists()  # status only reads
    (row,) = assert_aligned(out, STATUS_HEADERS, rows=1)
    assert row[:4] == ["east-1", "-", "-", "-"]


def test_status_json_after_a_daemon_run_shows_the_outcome_and_the_next_slot(
    tmp_path: Path, simulator: Simulator, run_refreshd: RunRefreshd
) -> None:
    config = write_daemon_config(
        tmp_path / "refreshd.toml",
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": ""},
        credentials={"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        servers=[
            {
                "name": "east-1",
                "api_url": simulator.api_url,
                "credentials": "main",
                "windows": [window_from_now(-60, 3600)],  # open now
            }
        ],
    )
    daemon = DaemonProcess(config).start()
    try:
        (line,) = daemon.wait_for("refresh.succeeded", timeout=15)
    finally:
        assert daemon.stop() == 0

    document = status(run_refreshd, config)

    assert set(document) == STATUS_KEYS
    (entry,) = document["servers"]
    assert set(entry) == STATUS_SERVER_KEYS
    assert entry["server"] == "east-1"
    assert entry["last_outcome"] == "ok"
    assert entry["last_success_at"] == entry["last_attempt_at"]
    assert instant(entry["last_success_at"]) >= instant(line["slot"])
    tomorrow = iso(instant(line["slot"]) + timedelta(days=1))
    assert (entry["next_run"], entry["next_slot"]) == (tomorrow, tomorrow)
    assert entry["credentials"] == "main"
    assert entry["suspended_until"] is None
    assert entry["credentials_wait_until"] is None


def test_status_json_shows_a_suspended_server_and_a_credentials_wait(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config(
        {"name": "east-1"},
        {
            "name": "west-1",
            "user": "noapi",
            "password": "noapi-pass",
            "path": "/w/x/non_agent_api.php",
        },
        {"name": "south-1", "password": WRONG_PASSWORD, "path": "/s/x/non_agent_api.php"},
    )
    code, _, err = run_refreshd(["refresh", "-c", config, "--all"])
    assert code == 1, err

    document = status(run_refreshd, config)

    entries = {entry["server"]: entry for entry in document["servers"]}
    assert all(set(entry) == STATUS_SERVER_KEYS for entry in entries.values())
    assert {name: entry["last_outcome"] for name, entry in entries.items()} == {
        "east-1": "ok",
        "west-1": "permission_denied",
        "south-1": "auth_failed",
    }
    west, south = entries["west-1"], entries["south-1"]
    assert west["suspended_until"] is not None
    assert "permission_denied" in west["suspension_reason"]
    assert instant(west["next_run"]) >= instant(west["suspended_until"])
    assert south["credentials_wait_until"] is not None
    assert south["credentials_wait_reason"]
    assert instant(south["next_run"]) >= instant(south["credentials_wait_until"])
    assert entries["east-1"]["suspended_until"] is None


def test_status_human_output_is_aligned_columns_under_a_header(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config(
        {"name": "east-1"},
        {
            "name": "a-much-longer-name",
            "user": "noapi",
            "password": "noapi-pass",
            "path": "/w/x/non_agent_api.php",
        },
    )
    run_refreshd(["refresh", "-c", config, "--all"])

    out = run_ok(run_refreshd, ["status", "-c", config])

    rows = assert_aligned(out, STATUS_HEADERS, rows=2)
    assert [row[:2] for row in rows] == [
        ["east-1", "ok"],
        ["a-much-longer-name", "permission_denied"],
    ]
    assert rows[1][5].startswith("suspended until ")
    assert rows[0][5] == ""


# -- history ---------------------------------------------------------------------------------


def test_history_json_after_a_refresh_has_the_documented_keys_newest_first(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config(
        {"name": "east-1"},
        {
            "name": "west-1",
            "user": "noapi",
            "password": "noapi-pass",
            "path": "/w/x/non_agent_api.php",
        },
    )
    run_refreshd(["refresh", "-c", config, "east-1"])
    run_refreshd(["refresh", "-c", config, "west-1"])

    rows = history(run_refreshd, config)

    assert all(set(row) == HISTORY_KEYS for row in rows)
    assert [(row["server"], row["outcome"]) for row in rows] == [
        ("west-1", "permission_denied"),
        ("east-1", "ok"),
    ]
    assert all(row["outcome"] in OUTCOMES for row in rows)
    west, east = rows
    assert instant(west["at"]) >= instant(east["at"])
    assert east["servers_flagged"] == 2
    assert east["http_status"] == 200
    assert east["attempt"] == 1
    assert isinstance(east["duration_ms"], int)
    assert (east["slot"], east["due"]) == (None, None)  # a manual refresh has no slot
    assert "PERMISSION" in west["detail"]


def test_history_after_a_daemon_run_shows_the_slot_and_due(
    tmp_path: Path, simulator: Simulator, run_refreshd: RunRefreshd
) -> None:
    config = write_daemon_config(
        tmp_path / "refreshd.toml",
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": ""},
        credentials={"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        servers=[
            {
                "name": "east-1",
                "api_url": simulator.api_url,
                "credentials": "main",
                "windows": [window_from_now(-60, 3600)],
            }
        ],
    )
    daemon = DaemonProcess(config).start()
    try:
        (line,) = daemon.wait_for("refresh.succeeded", timeout=15)
    finally:
        assert daemon.stop() == 0

    (row,) = history(run_refreshd, config)

    assert (row["server"], row["outcome"], row["attempt"]) == ("east-1", "ok", 1)
    assert row["slot"] == line["slot"]
    assert row["due"] == line["slot"]


def test_history_server_shows_only_that_server(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config(
        {"name": "east-1"},
        {"name": "west-1", "path": "/w/x/non_agent_api.php"},
    )
    run_refreshd(["refresh", "-c", config, "--all"])
    run_refreshd(["refresh", "-c", config, "west-1"])

    rows = history(run_refreshd, config, "--server", "west-1")

    assert [row["server"] for row in rows] == ["west-1", "west-1"]
    assert history(run_refreshd, config, "--server", "nobody") == []


def test_history_since_a_duration_leaves_out_older_calls(
    simulator: Simulator,
    write_config: WriteConfig,
    run_refreshd: RunRefreshd,
    state_path: Path,
) -> None:
    config = write_config({"name": "east-1"})
    run_refreshd(["refresh", "-c", config, "east-1"])
    with StateStore(state_path) as store:  # a call from two hours ago
        store.journal(
            servers={},
            logins={},
            call=NewCall(
                server="east-1",
                slot_start=None,
                due=None,
                attempt=1,
                outcome=Outcome.TRANSIENT,
                at=datetime.now(UTC) - timedelta(hours=2),
                duration_ms=5,
            ),
        )

    recent = history(run_refreshd, config, "--since", "1h")
    everything = history(run_refreshd, config)

    assert [row["outcome"] for row in recent] == ["ok"]
    assert [row["outcome"] for row in everything] == ["ok", "transient"]
    since_iso = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    assert len(history(run_refreshd, config, "--since", since_iso)) == 2


def test_history_human_output_is_aligned_columns_under_a_header(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config(
        {"name": "east-1"},
        {
            "name": "a-much-longer-name",
            "user": "noapi",
            "password": "noapi-pass",
            "path": "/w/x/non_agent_api.php",
        },
    )
    run_refreshd(["refresh", "-c", config, "east-1"])
    run_refreshd(["refresh", "-c", config, "a-much-longer-name"])

    out = run_ok(run_refreshd, ["history", "-c", config])

    rows = assert_aligned(out, HISTORY_HEADERS, rows=2)
    assert [row[1:4] for row in rows] == [
        ["a-much-longer-name", "permission_denied", "1"],
        ["east-1", "ok", "1"],
    ]
    assert rows[1][5].startswith("SUCCESS")


def test_history_never_shows_an_echoed_wrong_password(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "password": WRONG_PASSWORD})
    code, out, _ = run_refreshd(["refresh", "-c", config, "east-1"])
    assert code == 1
    assert any(call["answer_kind"] == "login_incorrect" for call in simulator.calls())

    as_json = run_ok(run_refreshd, ["history", "-c", config, "--json"])
    as_table = run_ok(run_refreshd, ["history", "-c", config])

    (row,) = [json.loads(line) for line in as_json.splitlines()]
    assert row["outcome"] == "auth_failed"
    assert WRONG_PASSWORD not in as_json + as_table + out
    assert "***" in row["detail"]


@pytest.mark.parametrize("since", ["yesterday", "1w", "1 hour"])
def test_history_refuses_a_bad_since_with_exit_2(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd, since: str
) -> None:
    config = write_config({"name": "east-1"})

    code, _, err = run_refreshd(["history", "-c", config, "--since", since])

    assert code == 2
    assert "--since" in err
    assert "Traceback" not in err


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")

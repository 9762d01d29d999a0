"""`refreshd plan`, `status` and `history` as an operator runs them: its exit code, its JSON
documents (README "JSON shapes") and its aligned tables. The command runs in-process
(`run_cli`, tests/support/cli.py) beside real daemons; two tests keep the real command in a
subprocess, for a read command's exit codes 0 and 1 through the interpreter."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
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
    NOAPI_PASSWORD,
    NOAPI_USER,
    WriteConfig,
    instant,
    one_server_config,
    window_from_now,
    write_daemon_config,
)
from tests.support.daemon import DaemonProcess, RunRefreshd
from tests.support.simulator import ScriptedVicidial
from tests.support.waiting import eventually

WRONG_PASSWORD = "Wr0ngSecret7qX"  # letters and digits: the simulator echoes it back as is
API_URL = "https://dialer.example.com/vicidial/non_agent_api.php"  # plan never calls it

PLAN_KEYS = {"from", "count", "servers"}
PLAN_SERVER_KEYS = {"server", "timezone", "runs"}
PLAN_RUN_KEYS = {"due", "due_local", "slot_start", "slot_start_local", "slot_end", "slot_end_local"}
STATUS_KEYS = {"at", "daemon", "servers", "instances"}
DAEMON_KEYS = {"running", "pid", "heartbeat"}
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
    "credentials_wait_kind",
    "credentials_wait_reason",
    "verified",
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
    "verified",
}
OUTCOMES = {str(outcome) for outcome in Outcome}

PLAN_HEADERS = ["SERVER", "DUE (LOCAL)", "SLOT START", "SLOT END"]
STATUS_HEADERS = ["SERVER", "LAST", "LAST CALL", "LAST SUCCESS", "APPLIED", "NEXT RUN", "HELD"]
HISTORY_HEADERS = ["AT", "SERVER", "OUTCOME", "TRY", "MS", "APPLIED", "DETAIL"]


# -- helpers ---------------------------------------------------------------------------------


def denied_server(name: str) -> dict[str, str]:
    """A server whose login works but lacks API access: its refresh is permission_denied."""
    return {
        "name": name,
        "user": NOAPI_USER,
        "password": NOAPI_PASSWORD,
        "path": "/w/x/non_agent_api.php",
    }


def _east_ok_then_denied(write_config: WriteConfig, run_cli: RunRefreshd, denied: str) -> Path:
    """east-1 (ok) and `denied` (permission_denied), refreshed in that order."""
    config = write_config({"name": "east-1"}, denied_server(denied))
    run_cli(["refresh", "-c", config, "east-1"])
    run_cli(["refresh", "-c", config, denied])
    return config


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
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    config = plan_config(tmp_path, ("ny", "America/New_York", "02:30-03:30"))

    document = plan(run_cli, config, "--from", "2027-03-14T00:00:00-05:00", "--count", "1")

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


def test_plan_gives_one_slot_on_the_fall_back_day(tmp_path: Path, run_cli: RunRefreshd) -> None:
    config = plan_config(tmp_path, ("ny", "America/New_York", "01:30-02:30"))

    document = plan(run_cli, config, "--from", "2027-11-07T00:00:00-04:00", "--count", "3")

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


def test_plan_shows_count_runs_per_server(tmp_path: Path, run_cli: RunRefreshd) -> None:
    config = plan_config(
        tmp_path,
        ("east-1", "America/New_York", "02:00-04:00"),
        ("west-1", "America/Los_Angeles", "mon-fri 01:00-02:00"),
    )

    document = plan(run_cli, config, "--from", "2027-01-04T00:00:00Z", "--count", "5")
    table = run_ok(
        run_cli, ["plan", "-c", config, "--from", "2027-01-04T00:00:00Z", "--count", "5"]
    )

    assert document["count"] == 5
    assert [len(entry["runs"]) for entry in document["servers"]] == [5, 5]
    dues = [instant(run["due"]) for run in runs_of(document, "west-1")]
    assert dues == sorted(dues)
    assert all(due.astimezone(UTC).weekday() < 5 for due in dues)  # 09:00Z on mon-fri
    rows = assert_aligned(table, PLAN_HEADERS, rows=10)
    assert [row[0] for row in rows] == ["east-1"] * 5 + ["west-1"] * 5


def test_plan_human_output_is_aligned_columns_under_a_header(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    config = plan_config(
        tmp_path,
        ("a", "UTC", "02:00-04:00"),
        ("a-much-longer-server-name", "Asia/Kolkata", "23:30-00:30"),
    )

    out = run_ok(run_cli, ["plan", "-c", config, "--from", "2027-01-04T00:00:00Z", "--count", "2"])

    rows = assert_aligned(out, PLAN_HEADERS, rows=4)
    assert rows[0] == [
        "a",
        "2027-01-04T02:00:00Z",
        "2027-01-04T02:00:00Z",
        "2027-01-04T04:00:00Z",
    ]
    assert rows[2][1] == "2027-01-04T23:30:00+05:30"


def test_plan_refuses_a_bad_from_with_exit_2_and_says_why(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    config = plan_config(tmp_path, ("ny", "America/New_York", "02:30-03:30"))

    code, out, err = run_cli(["plan", "-c", config, "--from", "next tuesday"])

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
    daemon_line, table = out.split("\n", 1)
    assert daemon_line == "daemon: NOT running (no heartbeat recorded)"
    (row,) = assert_aligned(table, STATUS_HEADERS, rows=1)
    assert row[:4] == ["east-1", "-", "-", "-"]


def test_status_json_after_a_daemon_run_shows_the_outcome_and_the_next_slot(
    tmp_path: Path, simulator: Simulator, run_cli: RunRefreshd
) -> None:
    config = one_server_config(
        tmp_path, simulator.api_url, window=window_from_now(-60, 3600)
    )  # open now
    daemon = DaemonProcess(config).start()
    try:
        (line,) = daemon.wait_for("refresh.succeeded")
    finally:
        assert daemon.stop() == 0

    document = status(run_cli, config)

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


def test_status_lists_the_running_daemon_as_a_live_instance(
    tmp_path: Path, simulator: Simulator, run_refreshd: RunRefreshd
) -> None:
    config = one_server_config(tmp_path, simulator.api_url, window=window_from_now(-60, 3600))
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("refresh.succeeded")
        # Its first renewal wrote its heartbeat row (at start, then every lease / 3).
        eventually(
            lambda: status(run_refreshd, config)["instances"], timeout=10, what="the instance"
        )
        (instance,) = status(run_refreshd, config)["instances"]
        text = run_ok(run_refreshd, ["status", "-c", config])
    finally:
        assert daemon.stop() == 0

    assert instance["pid"] == daemon.pid
    assert instance["instance"] == f"{instance['host']}:{daemon.pid}"
    assert instance["holds"] == []  # its one run is done, nothing held
    assert f"instance {instance['instance']}: " in text
    assert "holds nothing" in text


def test_status_json_shows_a_suspended_server_and_a_credentials_wait(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config(
        {"name": "east-1"},
        denied_server("west-1"),
        {"name": "south-1", "password": WRONG_PASSWORD, "path": "/s/x/non_agent_api.php"},
    )
    code, _, err = run_cli(["refresh", "-c", config, "--all"])
    assert code == 1, err

    document = status(run_cli, config)

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
    assert south["credentials_wait_kind"] == "refused_login"
    assert instant(south["next_run"]) >= instant(south["credentials_wait_until"])
    assert entries["east-1"]["suspended_until"] is None


def test_status_human_output_is_aligned_columns_under_a_header(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1"}, denied_server("a-much-longer-name"))
    run_cli(["refresh", "-c", config, "--all"])

    out = run_ok(run_cli, ["status", "-c", config])

    rows = assert_aligned(out.split("\n", 1)[1], STATUS_HEADERS, rows=2)
    assert [row[:2] for row in rows] == [
        ["east-1", "ok"],
        ["a-much-longer-name", "permission_denied"],
    ]
    assert rows[1][6].startswith("suspended until ")
    assert rows[0][6] == ""


# -- history ---------------------------------------------------------------------------------


def test_history_json_after_a_refresh_has_the_documented_keys_newest_first(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = _east_ok_then_denied(write_config, run_cli, "west-1")

    rows = history(run_cli, config)

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
    tmp_path: Path, simulator: Simulator, run_cli: RunRefreshd
) -> None:
    config = one_server_config(tmp_path, simulator.api_url, window=window_from_now(-60, 3600))
    daemon = DaemonProcess(config).start()
    try:
        (line,) = daemon.wait_for("refresh.succeeded")
    finally:
        assert daemon.stop() == 0

    (row,) = history(run_cli, config)

    assert (row["server"], row["outcome"], row["attempt"]) == ("east-1", "ok", 1)
    assert row["slot"] == line["slot"]
    assert row["due"] == line["slot"]


def test_history_server_shows_only_that_server(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config(
        {"name": "east-1"},
        {"name": "west-1", "path": "/w/x/non_agent_api.php"},
    )
    run_cli(["refresh", "-c", config, "--all"])
    run_cli(["refresh", "-c", config, "west-1"])

    rows = history(run_cli, config, "--server", "west-1")

    assert [row["server"] for row in rows] == ["west-1", "west-1"]


def test_history_since_a_duration_leaves_out_older_calls(
    simulator: Simulator,
    write_config: WriteConfig,
    run_cli: RunRefreshd,
    state_path: Path,
) -> None:
    config = write_config({"name": "east-1"})
    run_cli(["refresh", "-c", config, "east-1"])
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

    recent = history(run_cli, config, "--since", "1h")
    everything = history(run_cli, config)

    assert [row["outcome"] for row in recent] == ["ok"]
    assert [row["outcome"] for row in everything] == ["ok", "transient"]
    since_iso = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    assert len(history(run_cli, config, "--since", since_iso)) == 2


def test_history_human_output_is_aligned_columns_under_a_header(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = _east_ok_then_denied(write_config, run_cli, "a-much-longer-name")

    out = run_ok(run_cli, ["history", "-c", config])

    rows = assert_aligned(out, HISTORY_HEADERS, rows=2)
    assert [row[1:4] for row in rows] == [
        ["a-much-longer-name", "permission_denied", "1"],
        ["east-1", "ok", "1"],
    ]
    assert rows[1][6].startswith("SUCCESS")


def test_history_never_shows_an_echoed_wrong_password(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "password": WRONG_PASSWORD})
    code, out, _ = run_cli(["refresh", "-c", config, "east-1"])
    assert code == 1
    assert any(call["answer_kind"] == "login_incorrect" for call in simulator.calls())

    as_json = run_ok(run_cli, ["history", "-c", config, "--json"])
    as_table = run_ok(run_cli, ["history", "-c", config])

    (row,) = [json.loads(line) for line in as_json.splitlines()]
    assert row["outcome"] == "auth_failed"
    assert WRONG_PASSWORD not in as_json + as_table + out
    assert "***" in row["detail"]


@pytest.mark.parametrize("since", ["yesterday", "1w", "1 hour"])
def test_history_refuses_a_bad_since_with_exit_2(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd, since: str
) -> None:
    config = write_config({"name": "east-1"})

    code, _, err = run_cli(["history", "-c", config, "--since", since])

    assert code == 2
    assert "--since" in err
    assert "Traceback" not in err


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- no secrets for reading (issue 12, item 1) -----------------------------------------------


def systemd_config(tmp_path: Path, api_url: str = API_URL) -> Path:
    """The README's systemd layout: one password as a systemd credential (password_file,
    read from $CREDENTIALS_DIRECTORY in the service), one from the environment."""
    return write_daemon_config(
        tmp_path / "etc" / "refreshd.toml",
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": ""},
        credentials={
            "east": {"user": GOOD_USER, "password_file": "east.password"},
            "west": {"user": "other", "password_env": "REFRESHD_WEST_PASSWORD"},
        },
        servers=[
            {
                "name": "east-1",
                "api_url": api_url,
                "credentials": "east",
                "windows": ["02:00-04:00"],
            },
            {
                "name": "west-1",
                "api_url": api_url,
                "credentials": "west",
                "windows": ["03:00-04:00"],
            },
        ],
    )


def test_status_history_and_plan_read_no_password_and_check_still_reports_it(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    (tmp_path / "etc").mkdir()
    config = systemd_config(tmp_path)  # neither east.password nor the variable exists here
    StateStore(tmp_path / "state.db").close()

    for command in (["status"], ["status", "--json"], ["history"], ["plan"], ["plan", "--json"]):
        code, _, err = run_cli([*command, "-c", config])
        assert code == 0, (command, err)
        assert "password" not in err, (command, err)

    code, _, err = run_cli(["check", "-c", config])
    assert code == 78
    assert "credentials.east.password_file" in err
    assert "credentials.west.password_env" in err
    code, _, err = run_cli(["refresh", "-c", config, "--all", "--dry-run"])
    assert code == 78
    assert "credentials.east.password_file" in err


# -- whether the daemon runs (issue 12, item 2) ----------------------------------------------

_WHEN = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d\d:\d\d {zone}, (\d+[smhd] ago|now|in \d+[smhd])"


@pytest.fixture
def idle_daemon(tmp_path: Path, simulator: Simulator) -> Iterator[tuple[Path, DaemonProcess]]:
    """A running daemon whose window is far away (it calls nobody), and its config."""
    config = one_server_config(tmp_path, simulator.api_url, window=window_from_now(7200, 60))
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.started")
        yield config, daemon
    finally:
        daemon.stop()


def test_status_says_the_daemon_runs_with_its_pid_and_heartbeat_then_that_it_stopped(
    idle_daemon: tuple[Path, DaemonProcess], run_cli: RunRefreshd
) -> None:
    config, daemon = idle_daemon
    eventually(
        lambda: status(run_cli, config)["daemon"]["heartbeat"] is not None,
        timeout=15,
        what="the daemon's first heartbeat in the state file",
    )

    running = status(run_cli, config)["daemon"]
    line = run_ok(run_cli, ["status", "-c", config]).splitlines()[0]
    line_utc = run_ok(run_cli, ["status", "-c", config, "--utc"]).splitlines()[0]
    code, out, err = run_cli(["status", "-c", config], env={"TZ": "America/New_York"})
    assert code == 0, err
    line_local = out.splitlines()[0]
    assert daemon.stop() == 0
    stopped = status(run_cli, config)["daemon"]
    line_stopped = run_ok(run_cli, ["status", "-c", config, "--utc"]).splitlines()[0]

    assert set(running) == DAEMON_KEYS
    assert (running["running"], running["pid"]) == (True, daemon.pid)
    assert abs(instant(running["heartbeat"]) - datetime.now(UTC)) < timedelta(seconds=60)
    assert running["heartbeat"].endswith("Z")
    assert re.fullmatch(
        rf"daemon: running \(pid {daemon.pid}\), last heartbeat {_WHEN.format(zone='UTC')}",
        line_utc,
    ), line_utc
    assert re.fullmatch(rf".*last heartbeat {_WHEN.format(zone='E[SD]T')}", line_local), line_local
    assert line.startswith(f"daemon: running (pid {daemon.pid})")
    assert (stopped["running"], stopped["pid"]) == (False, None)
    assert instant(stopped["heartbeat"]) >= instant(running["heartbeat"])
    assert re.fullmatch(
        rf"daemon: NOT running \(last heartbeat {_WHEN.format(zone='UTC')}\)", line_stopped
    ), line_stopped


def test_status_and_history_human_times_have_a_weekday_and_no_microseconds(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1"})
    run_cli(["refresh", "-c", config, "east-1"])

    status_out = run_ok(run_cli, ["status", "-c", config, "--utc"])
    history_out = run_ok(run_cli, ["history", "-c", config, "--utc"])

    (row,) = assert_aligned(status_out.split("\n", 1)[1], STATUS_HEADERS, rows=1)
    assert re.fullmatch(_WHEN.format(zone="UTC"), row[2]), row
    assert row[2] == row[3]  # last call, last success
    assert re.fullmatch(_WHEN.format(zone="UTC"), row[5]), row
    (call,) = assert_aligned(history_out, HISTORY_HEADERS, rows=1)
    assert re.fullmatch(_WHEN.format(zone="UTC").replace(r"\d\d:\d\d", r"\d\d:\d\d:\d\d"), call[0])
    assert not re.search(r"\d:\d\d[.,]\d", status_out + history_out)


# -- CLI input never tracebacks (issue 12, item 3) -------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["history", "--since", "99999999d"], "--since"),
        (["history", "--since", "0001-01-01T00:00:00+14:00"], "out of range"),
        (["history", "--limit", "99999999999999999999"], "at most 1,000,000"),
        (["plan", "--from", "9999-12-31"], "out of range"),
        (["plan", "--from", "0001-01-01"], "out of range"),
        (["plan", "--count", "10001"], "at most 10,000"),
        (["history", "--server", "NOSUCH"], "unknown server(s) NOSUCH; configured: east-1"),
        (["refresh", "NOSUCH"], "unknown server(s) NOSUCH; configured: east-1"),
    ],
)
def test_out_of_range_input_is_a_usage_error_on_one_line(
    tmp_path: Path, run_cli: RunRefreshd, args: list[str], says: str
) -> None:
    config = plan_config(tmp_path, ("east-1", "America/New_York", "02:00-04:00"))
    StateStore(tmp_path / "state.db").close()

    code, out, err = run_cli([*args[:1], "-c", config, *args[1:]])

    assert (code, out) == (2, "")
    assert says in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_the_plan_count_cap_itself_is_allowed_up_to_the_last_accepted_year(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    config = plan_config(tmp_path, ("east-1", "Pacific/Kiritimati", "sun 23:00-23:30"))

    document = plan(run_cli, config, "--count", "10000", "--from", "8999-12-31T23:59:59Z")

    assert document["count"] == 10_000
    assert runs_of(document, "east-1")  # planned into year 9000 without overflowing


# -- terminal safety (issue 12, item 11) -----------------------------------------------------

HOSTILE = (
    "ERROR: USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION \x1b[2J\x1b]0;owned\x07\rgone\x9b"
)


def test_history_and_status_show_control_characters_from_an_answer_escaped(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    scripted = ScriptedVicidial({"/hostile/non_agent_api.php": HOSTILE})
    try:
        config = one_server_config(tmp_path, scripted.url + "/hostile/non_agent_api.php")
        code, _, err = run_cli(["refresh", "-c", config, "east-1"])
    finally:
        scripted.close()
    assert code == 1, err

    table = run_ok(run_cli, ["history", "-c", config])
    shown = run_ok(run_cli, ["status", "-c", config])
    (row,) = history(run_cli, config)

    assert row["outcome"] == "permission_denied"
    assert "\x1b]0;owned\x07" in row["detail"]  # JSON keeps the text; json escapes it
    for out in (table, shown, err):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out), repr(out)
    assert "\\x1b[2J\\x1b]0;owned" in table


DIALER = "https://dialer.example.com/vicidial/non_agent_api.php"


@pytest.mark.parametrize("command", ["status", "history"])
def test_a_state_file_that_cannot_be_looked_at_is_one_line_and_exit_1(
    tmp_path: Path, run_refreshd: RunRefreshd, command: str
) -> None:
    # A name past the file system's 255 bytes fails as a directory the operator may not
    # search does (the README's systemd layout, /var/lib/private, for a non-root user).
    config = one_server_config(
        tmp_path, DIALER, daemon={"state_path": str(tmp_path / ("s" * 300 + ".db"))}
    )

    code, _out, err = run_refreshd([command, "-c", config])

    assert code == 1, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert "File name too long" in err


def test_refresh_of_an_unknown_server_is_a_usage_error_before_any_password_is_read(
    tmp_path: Path, run_cli: RunRefreshd
) -> None:
    config = one_server_config(tmp_path, DIALER, password={"password_env": "NOT_IN_THIS_SHELL"})

    assert run_cli(["refresh", "NOSUCH", "-c", config])[0] == 2
    assert run_cli(["refresh", "-c", config])[0] == 2
    assert run_cli(["refresh", "east-1", "-c", config])[0] == 78  # a name: now it reads

"""`refreshd refresh` as an operator runs it, against the simulator on loopback, judged by
its JSON log lines, its exit code and what the simulator saw. Most tests run the command
in-process (`run_cli`, tests/support/cli.py); the real command in a subprocess stays for
what a process shows: stdout holding JSON lines only, exit codes 0, 1 and 2 through the
interpreter, an echoed password in no real output, eleven separate runs sharing one
credentials wait through the state file, and a closed stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from refreshd.simulator import API_PATH, Simulator
from tests.support.config import GOOD_PASSWORD, WriteConfig
from tests.support.daemon import RunRefreshd, clean_env

WRONG_PASSWORD = "Wr0ng-Secret_7qX"  # distinctive: a match anywhere can only be a leak


def log_lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line as a JSON object; fails on a line that is not one, or lacks the
    fields every log line has."""
    lines = []
    for number, text in enumerate(stdout.splitlines(), 1):
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            pytest.fail(f"stdout line {number} is not JSON: {text!r}")
        assert isinstance(line, dict), text
        assert {"timestamp", "level", "event"} <= set(line), text
        stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == timedelta(0), text
        lines.append(line)
    return lines


def outcomes(stdout: str) -> dict[str, str]:
    """server -> outcome, from the refresh.succeeded / refresh.failed lines."""
    return {
        line["server"]: line["outcome"]
        for line in log_lines(stdout)
        if line["event"] in ("refresh.succeeded", "refresh.failed")
    }


def refresh(run: RunRefreshd, config: Path, *names: str, **env: str) -> tuple[int, str, str]:
    return run(["refresh", "-c", config, *(names or ["--all"])], env=env)


def assert_refresh_fails_as(run: RunRefreshd, config: Path, outcome: str) -> str:
    """`refresh east-1` logs `outcome` for east-1 and exits 1; its stdout, for more checks."""
    code, out, _ = refresh(run, config, "east-1")

    assert outcomes(out) == {"east-1": outcome}
    assert code == 1
    return out


def api_requests(sim: Simulator) -> int:
    return sum(sim.stats()["requests"].values())


# -- one server, one outcome ----------------------------------------------------------------


def test_a_good_server_logs_refresh_succeeded_with_servers_flagged(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1"})

    code, out, err = refresh(run_cli, config, "east-1")

    (line,) = [x for x in log_lines(out) if x["event"] == "refresh.succeeded"]
    assert line["server"] == "east-1"
    assert line["outcome"] == "ok"
    assert line["servers_flagged"] == 2  # the two active servers of config/simulator.toml
    assert code == 0, err
    assert simulator.stats()["refreshes"] == 1


def test_every_stdout_line_is_json_with_timestamp_level_and_event(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config(
        {"name": "good"},
        {"name": "wrong", "user": "admin", "password": "not-admin1234"},
        {"name": "denied", "user": "nolevel", "password": "nolevel-pass"},
    )

    _, out, _ = refresh(run_refreshd, config)

    lines = log_lines(out)
    assert len(lines) >= 3
    assert {line["level"] for line in lines} <= {"debug", "info", "warning", "error"}


def test_a_wrong_password_is_auth_failed(write_config: WriteConfig, run_cli: RunRefreshd) -> None:
    config = write_config({"name": "east-1", "password": WRONG_PASSWORD})

    assert_refresh_fails_as(run_cli, config, "auth_failed")


@pytest.mark.parametrize("user", ["nolevel", "noapi", "noast", "nofunc"])
def test_each_missing_permission_is_permission_denied(
    write_config: WriteConfig, run_cli: RunRefreshd, user: str
) -> None:
    config = write_config({"name": "east-1", "user": user, "password": f"{user}-pass"})

    assert_refresh_fails_as(run_cli, config, "permission_denied")


def test_a_refused_ip_address_is_ip_blocked(
    write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "user": "ipblocked", "password": "ipblocked-pass"})

    assert_refresh_fails_as(run_cli, config, "ip_blocked")


def test_an_http_500_is_transient(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1"})
    simulator.set_fault("http500")

    out = assert_refresh_fails_as(run_cli, config, "transient")

    (line,) = [x for x in log_lines(out) if x["event"] == "refresh.failed"]
    assert (line["outcome"], line["http_status"]) == ("transient", 500)


def test_an_html_error_page_is_unexpected(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1"})
    simulator.set_fault("html")

    assert_refresh_fails_as(run_cli, config, "unexpected")


# -- exit codes and names ----------------------------------------------------------------------


def test_exit_is_0_when_every_server_is_ok(
    write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config(
        {"name": "east-1", "path": "/east" + API_PATH},
        {"name": "west-1", "path": "/west" + API_PATH},
    )

    code, out, err = refresh(run_refreshd, config)

    assert outcomes(out) == {"east-1": "ok", "west-1": "ok"}
    assert code == 0, err


def test_exit_is_1_when_any_server_is_not_ok(
    write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config(
        {"name": "east-1"}, {"name": "west-1", "user": "nofunc", "password": "nofunc-pass"}
    )

    code, out, _ = refresh(run_refreshd, config)

    assert outcomes(out) == {"east-1": "ok", "west-1": "permission_denied"}
    assert code == 1


def test_an_unknown_server_name_exits_2_listing_the_known_names(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config({"name": "east-1"}, {"name": "west-1", "path": "/w" + API_PATH})

    code, out, err = refresh(run_refreshd, config, "east-1", "nowhere")

    assert code == 2
    assert "nowhere" in err
    assert "east-1" in err
    assert "west-1" in err
    assert out == ""
    assert api_requests(simulator) == 0


# -- dry run -------------------------------------------------------------------------------------


def test_dry_run_prints_each_request_with_the_password_masked(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "password_env": "EAST_PASSWORD"})

    code, out, err = run_cli(
        ["refresh", "-c", config, "--all", "--dry-run"], env={"EAST_PASSWORD": GOOD_PASSWORD}
    )

    assert code == 0, err
    (line,) = out.splitlines()
    assert line.startswith("east-1")
    assert simulator.api_url in line
    assert "function=server_refresh" in line
    assert "user=refreshd" in line
    assert "pass=***" in line
    assert GOOD_PASSWORD not in out + err


def test_dry_run_sends_nothing(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1"}, {"name": "west-1", "path": "/w" + API_PATH})
    before = simulator.stats()

    code, _, _ = run_cli(["refresh", "-c", config, "--all", "--dry-run"])

    assert code == 0
    assert simulator.stats() == before
    assert simulator.calls() == []


# -- logins and duplicates -------------------------------------------------------------------------


def test_servers_sharing_one_wrong_password_cost_one_failed_login(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    # Five web servers (different URLs), one credentials table: the first refused login
    # must stop the other four, or five failures go towards VICIdial's lock-out at once.
    config = write_config(
        *(
            {"name": f"web-{i}", "path": f"/web{i}{API_PATH}", "password_env": "PW"}
            for i in range(5)
        )
    )

    code, out, _ = refresh(run_cli, config, PW=WRONG_PASSWORD)

    assert simulator.stats()["logins"]["failed"] == 1
    assert api_requests(simulator) == 1
    skipped = [x["server"] for x in log_lines(out) if x["event"] == "refresh.skipped"]
    assert len(skipped) == 4
    assert code == 1


def test_identical_servers_send_one_request(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1"}, {"name": "east-1-again"})

    code, out, _ = refresh(run_cli, config)

    assert api_requests(simulator) == 1
    assert outcomes(out) == {"east-1": "ok", "east-1-again": "ok"}
    assert code == 0


def test_same_url_and_user_with_different_passwords_are_two_requests(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config(
        {"name": "east-1", "password_env": "GOOD"}, {"name": "east-2", "password_env": "BAD"}
    )

    _, out, _ = refresh(run_cli, config, GOOD=GOOD_PASSWORD, BAD=WRONG_PASSWORD)

    assert outcomes(out) == {"east-1": "ok", "east-2": "auth_failed"}
    assert api_requests(simulator) == 2


# -- secrets ---------------------------------------------------------------------------------------


def assert_nowhere(secret: str, *texts: str) -> None:
    # VICIdial passwords (and so valid configs) hold only [A-Za-z0-9_-], which URL-encoding
    # leaves alone; both forms are checked so a broader charset would still be covered.
    for form in {secret, quote_plus(secret)}:
        for text in texts:
            assert form not in text


def test_a_wrong_password_echoed_by_vicidial_appears_in_no_output(
    write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "password_env": "PW"})

    _, out, err = refresh(run_refreshd, config, PW=WRONG_PASSWORD)

    # The simulator echoed it (Login incorrect: |user|pass|BAD|); it was masked on the way.
    (line,) = [x for x in log_lines(out) if x["event"] == "refresh.failed"]
    assert "|refreshd|***|BAD|" in line["detail"]
    assert_nowhere(WRONG_PASSWORD, out, err)


def test_a_good_password_appears_in_no_output(
    write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "password_env": "PW"})

    code, out, err = refresh(run_cli, config, PW=GOOD_PASSWORD)

    assert code == 0
    assert_nowhere(GOOD_PASSWORD, out, err)


@pytest.mark.parametrize("password", [WRONG_PASSWORD, GOOD_PASSWORD])
def test_no_password_is_written_to_the_state_database(
    write_config: WriteConfig, run_cli: RunRefreshd, state_path: Path, password: str
) -> None:
    config = write_config({"name": "east-1", "password_env": "PW"})

    refresh(run_cli, config, PW=password)

    files = sorted(state_path.parent.glob(state_path.name + "*"))  # with -wal, -journal
    stored = b"".join(path.read_bytes() for path in files)
    assert b"east-1" in stored  # the call was recorded here
    assert_nowhere(password, stored.decode("latin-1"))


# -- the credentials wait binds the command too ----------------------------------------------


def test_eleven_manual_refreshes_with_a_wrong_password_cost_one_failed_login(
    simulator: Simulator, write_config: WriteConfig, run_refreshd: RunRefreshd
) -> None:
    # Each run reads the wait the first one journaled: ten more runs, no more logins.
    config = write_config({"name": "east-1", "password_env": "PW"})

    runs = [refresh(run_refreshd, config, "east-1", PW=WRONG_PASSWORD) for _ in range(11)]

    assert simulator.stats()["logins"]["failed"] == 1
    assert simulator.stats()["lockouts"] == []
    assert [code for code, _, _ in runs] == [1] * 11
    for _, out, err in runs[1:]:
        assert out == ""
        assert "credentials 'login1' wait until" in err
        assert "login refused" in err
        assert "--force" in err
        assert WRONG_PASSWORD not in out + err


def test_force_logs_in_during_a_wait_once_for_all_its_servers(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config(
        *(
            {"name": f"web-{i}", "path": f"/web{i}{API_PATH}", "password_env": "PW"}
            for i in range(3)
        )
    )
    refresh(run_cli, config, PW=WRONG_PASSWORD)  # refused: the wait starts

    code, out, _ = run_cli(
        ["refresh", "--force", "-c", config, "--all"], env={"PW": WRONG_PASSWORD}
    )

    assert code == 1
    assert simulator.stats()["logins"]["failed"] == 2  # one per run, never one per server
    assert len([x for x in log_lines(out) if x["event"] == "refresh.skipped"]) == 2


def test_force_with_the_right_password_ends_the_wait(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd
) -> None:
    config = write_config({"name": "east-1", "password_env": "PW"})
    refresh(run_cli, config, "east-1", PW=WRONG_PASSWORD)
    # Same login, same password in the file: the wait holds until a forced login works.
    simulator.update_user("refreshd", password=WRONG_PASSWORD)

    forced = run_cli(["refresh", "--force", "-c", config, "east-1"], env={"PW": WRONG_PASSWORD})
    after = refresh(run_cli, config, "east-1", PW=WRONG_PASSWORD)

    assert outcomes(forced[1]) == {"east-1": "ok"}
    assert after[0] == 0, after[2]


@pytest.mark.parametrize("reader", ["closed at once", "reads one line"])
def test_a_closed_stdout_neither_hangs_nor_loses_the_call(
    simulator: Simulator,
    write_config: WriteConfig,
    run_refreshd: RunRefreshd,
    tmp_path: Path,
    reader: str,
) -> None:
    # `refreshd refresh NAME | true` and `| head -1`: the reader is gone before (or while)
    # the command logs; the call must still be recorded and the command must end.
    config = write_config({"name": "east-1"}, {"name": "east-2", "server_ip": "10.0.0.12"})
    process = subprocess.Popen(
        [sys.executable, "-m", "refreshd", "refresh", "-c", str(config), "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert process.stdout is not None
    if reader == "reads one line":
        process.stdout.readline()
    process.stdout.close()

    try:
        code = process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("refreshd refresh hung on a closed stdout")
    stderr = process.communicate()[1].decode()

    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert simulator.stats()["logins"]["ok"] == 2
    _, out, _ = run_refreshd(["history", "--json", "-c", config])
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(row["server"] for row in rows) == ["east-1", "east-2"]


def test_without_a_readable_state_file_no_login_is_tried_unless_forced(
    simulator: Simulator, write_config: WriteConfig, run_cli: RunRefreshd, state_path: Path
) -> None:
    # The waits and the failed-login budget live in the state file: a command that
    # cannot read it cannot know whether one more login is one too many.
    config = write_config({"name": "east-1"})
    state_path.mkdir()  # a directory where the file should be: it cannot be opened

    refused = refresh(run_cli, config, "east-1")
    forced = run_cli(["refresh", "--force", "-c", config, "east-1"])

    assert refused[0] == 1
    assert "no login is tried" in refused[2]
    assert str(state_path) in refused[2]
    assert outcomes(forced[1]) == {"east-1": "ok"}
    assert "not recording" in forced[2]
    assert simulator.stats()["logins"]["ok"] == 1  # the forced one only

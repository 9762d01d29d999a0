"""`run_cli` (tests/support/cli.py) stands in for the real command in many tests: it must
give what a child process gives (compared here with the real command), and leave this
process as it found it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import structlog

from refreshd.logs import redactor
from refreshd.simulator import Simulator
from tests.support.cli import run_cli
from tests.support.config import GOOD_PASSWORD, GOOD_USER, WriteConfig, write_daemon_config
from tests.support.daemon import run_refreshd

API_URL = "https://dialer.example.com/vicidial/non_agent_api.php"


def _config(directory: Path, password: dict[str, str]) -> Path:
    return write_daemon_config(
        directory / "refreshd.toml",
        daemon={"state_path": str(directory / "state.db"), "metrics_listen": ""},
        credentials={"main": {"user": GOOD_USER, **password}},
        servers=[
            {
                "name": "east-1",
                "api_url": API_URL,
                "credentials": "main",
                "timezone": "America/New_York",
                "windows": ["02:00-04:00"],
            }
        ],
    )


@pytest.mark.parametrize(
    "case",
    ["version", "usage", "no-such-file", "password-unset", "plan", "dry-run"],
)
def test_in_process_gives_the_child_s_exit_code_stdout_and_stderr(
    tmp_path: Path, case: str
) -> None:
    config = _config(tmp_path, {"password_env": "PW"})
    env = {"PW": GOOD_PASSWORD, "TZ": "Asia/Kolkata"}
    args: list[str | Path] = {
        "version": ["--version"],
        "usage": ["plan", "--count", "0", "-c", config],
        "no-such-file": ["check", "-c", tmp_path / "nosuch.toml"],
        "password-unset": ["check", "-c", config],
        "plan": ["plan", "-c", config, "--from", "2027-03-14T00:00:00Z"],
        "dry-run": ["refresh", "--all", "--dry-run", "-c", config],
    }[case]
    if case == "password-unset":
        env = {}

    child = run_refreshd(*args, env=env, cwd=tmp_path)
    here = run_cli(*args, env=env, cwd=tmp_path)

    assert here == (child.returncode, child.stdout, child.stderr)


def _process_state() -> tuple[object, ...]:
    """What a command run in-process could leave changed in the test's own process."""
    return (
        dict(os.environ),
        os.getcwd(),
        sys.stdout,
        sys.stderr,
        time.tzname,
        structlog.get_config(),
        redactor.secrets,
    )


def test_the_process_is_left_as_it_was(
    tmp_path: Path, simulator: Simulator, write_config: WriteConfig
) -> None:
    # check --online sets up the log (on stderr) and the known secrets, as a child would.
    config = write_config({"name": "east-1"})
    before = _process_state()

    code, out, err = run_cli(
        "check", "--online", "-c", config, env={"TZ": "Asia/Kolkata"}, cwd=tmp_path
    )

    assert code == 0, err
    assert "2 passed, 0 failed" in out
    after = _process_state()
    assert after == before

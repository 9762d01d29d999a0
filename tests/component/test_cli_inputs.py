"""Every option of every command, given any value, ends in an exit code (0, 1, 2 or 78) and a
message, never a traceback: `refreshd.cli.main` run in-process on a real config and state
file, over values hypothesis draws and the ones issue 12 found."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refreshd.cli import main
from refreshd.store import StateStore
from tests.support.config import GOOD_PASSWORD, GOOD_USER, write_daemon_config

EXITS = {0, 1, 2, 78}
# Values that broke or nearly broke a command: huge numbers, far dates, zone offsets at
# the edge of datetime, non-ASCII digits, control characters, undecodable bytes.
NASTY = [
    "99999999d",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "99999999999999999999",
    "9" * 5000,
    "9999-12-31",
    "0001-01-01",
    "-1",
    "0",
    "²",
    "1e9",
    "nan",
    "",
    " ",
    "\x1b[2J",
    "\udcff",
    "east-1\r",
    "1h" * 400,
    "\x00",
    ".",
    "/dev/null",
]
values = st.one_of(st.sampled_from(NASTY), st.text(max_size=40))

# (command, option or None for a positional name) that take a value.
OPTIONS = [
    ("plan", "--from"),
    ("plan", "--count"),
    ("history", "--server"),
    ("history", "--since"),
    ("history", "--limit"),
    ("refresh", None),
    ("status", "--config"),
]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli-inputs")
    StateStore(base / "state.db").close()
    return write_daemon_config(
        base / "refreshd.toml",
        daemon={"state_path": str(base / "state.db"), "metrics_listen": ""},
        credentials={"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        servers=[
            {
                "name": "east-1",
                "api_url": "https://dialer.example.com/vicidial/non_agent_api.php",
                "credentials": "main",
                "timezone": "Pacific/Kiritimati",
                "windows": ["sun 23:00-23:30"],
            }
        ],
    )


def exit_of(argv: Sequence[str]) -> tuple[int, str]:
    """main's exit code (returned or raised by argparse) and what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 2
    return code, err.getvalue()


@pytest.mark.parametrize(("command", "option"), OPTIONS)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=values)
def test_any_option_value_ends_in_an_exit_code_and_a_message(
    config: Path, command: str, option: str | None, value: str
) -> None:
    if option == "--config":
        argv = [command, f"--config={value}"]
    elif option is None:
        argv = [command, "-c", str(config), "--dry-run", "--", value]
    else:
        argv = [command, "-c", str(config), f"{option}={value}"]

    code, err = exit_of(argv)

    assert code in EXITS, (code, err)
    if code == 2:
        assert err.strip(), "a usage error says why"
        assert err.replace("\n", "").isprintable(), repr(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--utc"],
        ["status", "--json"],
        ["history", "--utc", "--json"],
        ["check"],
        ["plan", "--count", "10000", "--from", "8999-12-31T23:59:59Z"],
        ["plan", "--from", "1970-01-01T00:00:00Z"],
        ["nosuch"],
        ["status", "--nosuch"],
        [],
    ],
)
def test_each_command_s_flags_end_in_an_exit_code(config: Path, argv: list[str]) -> None:
    args = [*argv[:1], "-c", str(config), *argv[1:]] if argv[:1] not in (["nosuch"], []) else argv

    code, err = exit_of(args)

    assert code in EXITS, (code, err)
    assert "Traceback" not in err

"""The real `refreshd run` and `refresh` choosing their log format and level (issue 15,
item 3): JSON when piped, console with `--log-format console` (coloured only on a terminal,
never with NO_COLOR), `auto` console on a pty, the level filter, and a bad value a usage
error."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from refreshd.simulator import Simulator
from tests.support.config import (
    GOOD_AND_NOAPI,
    sim_server,
    window_from_now,
    write_daemon_config,
)
from tests.support.daemon import EXIT_OK, DaemonProcess, RunRefreshd, clean_env
from tests.support.waiting import eventually

ESC = "\x1b"


def write_config(tmp_path: Path, sim: Simulator, name: str = "refreshd") -> Path:
    """east-1 refreshes (info), lab-1 lacks API access: refresh.failed (error) and
    server.suspended (warning); both windows open now. `name` names the config and its own
    state file (a second daemon on the same state would find the slot done)."""
    window = window_from_now(0, 600)
    return write_daemon_config(
        tmp_path / f"{name}.toml",
        servers=[
            sim_server(sim.url, "east-1", "east", "good", window),
            sim_server(sim.url, "lab-1", "lab", "noapi", window),
        ],
        credentials=GOOD_AND_NOAPI,
        daemon={
            "state_path": str(tmp_path / f"{name}.db"),
            "metrics_listen": "",
            "spread": "0s",
            "shutdown_grace": "1s",
        },
    )


class Run(DaemonProcess):
    """`refreshd run -c CONFIG OPTIONS...`."""

    def __init__(self, config: Path, options: Sequence[str], **kwargs: object) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        self.options = list(options)

    def command(self) -> list[str]:
        return [*super().command(), *self.options]


@contextmanager
def running(
    config: Path, *options: str, env: dict[str, str] | None = None
) -> Iterator[DaemonProcess]:
    daemon = Run(config, options, env=env).start()
    try:
        yield daemon
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.stderr, daemon.stderr


def both_settled(daemon: DaemonProcess) -> None:
    """Wait until east-1 was refreshed and lab-1 suspended, whatever the format."""

    def seen() -> bool:
        text = daemon.stdout
        return "east-1" in text and "server.suspended" in text

    eventually(seen, timeout=20, what=f"both servers settled; stdout: {daemon.stdout[-2000:]}")


def test_run_writes_json_lines_when_piped(tmp_path: Path, simulator: Simulator) -> None:
    with running(write_config(tmp_path, simulator)) as daemon:
        daemon.wait_for("refresh.succeeded", server="east-1", timeout=20)
        daemon.wait_for("server.suspended", server="lab-1", timeout=20)
    assert daemon.bad_lines == []
    assert {"daemon.started", "refresh.failed", "daemon.stopped"} <= {
        e["event"] for e in daemon.events
    }


def test_run_with_log_format_console_writes_short_uncoloured_lines_when_piped(
    tmp_path: Path, simulator: Simulator
) -> None:
    with running(write_config(tmp_path, simulator), "--log-format", "console") as daemon:
        eventually(lambda: "refresh.succeeded" in daemon.stdout, timeout=20, what="a refresh")
        both_settled(daemon)
    lines = daemon.stdout_lines
    assert daemon.events == [], "no JSON line in console format"
    assert ESC not in daemon.stdout, "no colour off a terminal"
    (succeeded,) = [line for line in lines if " refresh.succeeded " in line][:1]
    stamp, level, rest = succeeded.split(" ", 2)
    assert stamp.endswith("Z")
    assert level == "info"
    assert rest.lstrip().startswith("refresh.succeeded server=east-1 outcome=ok attempt=1 ")
    assert any(line.split()[1:3] == ["warning", "server.suspended"] for line in lines)


def test_the_level_filter_keeps_warnings_and_errors_only(
    tmp_path: Path, simulator: Simulator
) -> None:
    config = write_config(tmp_path, simulator)
    with running(config, "--log-level", "warning") as daemon:
        daemon.wait_for("server.suspended", server="lab-1", timeout=20)
        # east-1's success is info: not logged, but the simulator saw the call.
        eventually(lambda: any(c["path"].startswith("/east") for c in simulator.calls()))
    levels = {e["level"] for e in daemon.events}
    events = {e["event"] for e in daemon.events}
    assert levels <= {"warning", "error"}, levels
    assert {"server.suspended", "refresh.failed"} <= events
    assert not events & {"daemon.started", "refresh.succeeded", "daemon.stopped"}


def test_the_environment_chooses_format_and_level_and_the_option_wins(
    tmp_path: Path, simulator: Simulator
) -> None:
    config = write_config(tmp_path, simulator)
    env = {"REFRESHD_LOG_FORMAT": "console", "REFRESHD_LOG_LEVEL": "error"}
    with running(config, env=env) as daemon:
        eventually(lambda: "refresh.failed" in daemon.stdout, timeout=20, what="refresh.failed")
    shown = [line.split()[1:3] for line in daemon.stdout_lines]
    assert ["error", "refresh.failed"] in shown
    assert {level for level, _ in shown} == {"error"}, shown
    config = write_config(tmp_path, simulator, "again")
    with running(config, "--log-format", "json", env=env) as daemon:
        daemon.wait_for("refresh.failed", timeout=20)
    assert {e["level"] for e in daemon.events} == {"error"}


def test_a_bad_format_or_level_is_a_one_line_usage_error(
    tmp_path: Path, run_refreshd: RunRefreshd, simulator: Simulator
) -> None:
    config = write_config(tmp_path, simulator)
    code, out, err = run_refreshd(["run", "-c", config, "--log-format", "yaml"])
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "'yaml' is not a log format: give auto, json or console" in err
    code, out, err = run_refreshd(["run", "-c", config], env={"REFRESHD_LOG_LEVEL": "loud"})
    assert (code, out) == (2, "")
    assert "'loud' is not a log level: give debug, info, warning or error" in err
    assert "REFRESHD_LOG_LEVEL" in err


def test_refresh_takes_the_same_options(
    tmp_path: Path, run_refreshd: RunRefreshd, simulator: Simulator
) -> None:
    config = write_config(tmp_path, simulator)
    code, out, err = run_refreshd(["refresh", "east-1", "-c", config, "--log-format", "console"])
    assert code == EXIT_OK, err
    (line,) = [line for line in out.splitlines() if "refresh.succeeded" in line]
    assert " refresh.succeeded server=east-1 outcome=ok " in line
    code, out, err = run_refreshd(["refresh", "east-1", "-c", config, "--log-level", "error"])
    assert (code, out) == (EXIT_OK, ""), err


def on_a_terminal(config: Path, env: dict[str, str], until: str) -> str:
    """`refreshd run` with its stdout and stderr a pseudo-terminal, read until `until` shows
    (or 20 s), then stopped; what the terminal received."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "refreshd", "run", "-c", str(config)],
        stdout=child,
        stderr=child,
        env=clean_env(env),
        cwd=config.parent,
    )
    os.close(child)
    received: list[str] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            received.append(chunk.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        eventually(lambda: until in "".join(received), timeout=20, what=until)
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(5)
        os.close(main)
    return "".join(received)


def test_auto_is_coloured_console_on_a_terminal_and_no_color_turns_colour_off(
    tmp_path: Path, simulator: Simulator
) -> None:
    shown = on_a_terminal(write_config(tmp_path, simulator), {}, until="refresh.succeeded")
    assert "\x1b[32minfo" in shown
    assert "refresh.succeeded" in shown
    assert not any(line.startswith("{") for line in shown.splitlines())
    config = write_config(tmp_path, simulator, "plain")
    plain = on_a_terminal(config, {"NO_COLOR": "1"}, until="daemon.started")
    assert ESC not in plain
    assert " info    daemon.started version=" in plain
    config = write_config(tmp_path, simulator, "json")
    json_on_tty = on_a_terminal(config, {"REFRESHD_LOG_FORMAT": "json"}, until="daemon.started")
    first = json_on_tty.splitlines()[0]
    assert json.loads(first)["timestamp"]

"""The real `refreshd` command as a child process: `refreshd run` with its JSON lines
collected as they come, one-shot commands beside it, and the checks every daemon's output
must pass."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.config import instant
from tests.support.repo import REPO

LEVELS = {"debug", "info", "warning", "error", "critical"}
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 78  # README: what each exit code means

# The shapes of the conftest fixtures `run_refreshd` and `start_daemon`.
RunResult = tuple[int, str, str]  # (returncode, stdout, stderr)
RunRefreshd = Callable[..., RunResult]
StartDaemon = Callable[..., "DaemonProcess"]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH and LANG only, plus `extra`: no REFRESHD_* override or CREDENTIALS_DIRECTORY
    inherited from the developer's shell."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **(extra or {})}


def beating_every_second() -> dict[str, str]:
    """The environment systemd gives a Type=notify service with WatchdogSec=2s (nobody
    listens on the socket): the daemon's heartbeat, which takes in what another process
    wrote to the state file, notices a deleted state file or a clock step, comes every
    second (half the watchdog) instead of every daemon.HEARTBEAT (10 s). For tests that
    wait on a heartbeat; not for tests of /healthz, which allows the loop 3 heartbeats."""
    return {
        "NOTIFY_SOCKET": f"@refreshd-test-{os.getpid()}-{time.monotonic_ns()}",
        "WATCHDOG_USEC": "2000000",
    }


def run_refreshd(
    *args: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """The real `python -m refreshd ARGS...`, run to its end in a clean environment plus
    `env`; raises subprocess.TimeoutExpired after `timeout` seconds."""
    return subprocess.run(
        [sys.executable, "-m", "refreshd", *map(str, args)],
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


class DaemonProcess:
    """`python -m refreshd run -c CONFIG`, with every stdout line parsed as JSON.

    A line that is not JSON is kept in `bad_lines` (stdout must hold nothing else).
    Every wait is bounded; `stop()` in a `finally` or fixture makes sure no child outlives
    its test.
    """

    def __init__(
        self,
        config: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.env = clean_env(env)
        self.cwd = cwd or config.parent
        self.preexec_fn = preexec_fn  # run in the child before refreshd starts
        self.events: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []

    def command(self) -> list[str]:
        """The child's argv; a subclass may run refreshd another way."""
        return [sys.executable, "-m", "refreshd", "run", "-c", str(self.config)]

    def start(self) -> DaemonProcess:
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=self.preexec_fn,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        return self

    def _read_stdout(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.stdout_lines.append(line)
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    self.bad_lines.append(line)
                else:
                    self.events.append(event)
                self._cond.notify_all()

    def _read_stderr(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.stderr_lines.append(line)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def matching(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [
                e
                for e in self.events
                if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            ]

    def wait_for(
        self, event: str, *, count: int = 1, timeout: float = 30.0, **fields: Any
    ) -> list[dict[str, Any]]:
        """Block until `count` lines of `event` (with `fields`) were logged; fail loudly."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    e
                    for e in self.events
                    if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
                ]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    raise AssertionError(
                        f"waited {timeout}s for {count} x {event} {fields}; saw "
                        f"{len(found)}. Last lines:\n"
                        + "".join(self.stdout_lines[-15:])
                        + "stderr:\n"
                        + "".join(self.stderr_lines[-15:])
                    )
                self._cond.wait(min(left, 0.2))

    def metrics_port(self, timeout: float = 30.0) -> int:
        """The port /metrics and /healthz are served on, from the `daemon.started` line
        (with `metrics_listen = "127.0.0.1:0"` the daemon picks a free one)."""
        (started,) = self.wait_for("daemon.started", timeout=timeout)[:1]
        assert started["metrics"], f"metrics are off: {started}"
        port = urlsplit(started["metrics"]).port
        assert port is not None, started
        return port

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it will not go."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.wait(5)
            raise

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    @property
    def stdout(self) -> str:
        with self._cond:
            return "".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self.stderr_lines)


def fds_and_threads(pid: int) -> tuple[int, int]:
    """(open file descriptors, threads) of the running process `pid`, from /proc."""
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def assert_json_lines_only(daemon: DaemonProcess) -> None:
    """stdout holds JSON objects only, each with an ISO UTC timestamp, a level and an event;
    stderr holds no traceback. (A kill -9 may cut the last line short: a final line without
    its newline is the kill's, not the daemon's.)"""
    bad = [line for line in daemon.bad_lines if line.endswith("\n")]
    assert bad == [], f"non-JSON lines on stdout: {bad[:5]!r}"
    for event in daemon.events:
        assert isinstance(event, dict), event
        assert {"timestamp", "level", "event"} <= set(event), event
        assert instant(event["timestamp"]).utcoffset() == timedelta(0), event
        assert event["level"] in LEVELS, event
        assert isinstance(event["event"], str), event
        assert event["event"], event
    assert "Traceback" not in daemon.stderr, daemon.stderr[-3000:]


class Daemons:
    """The daemons one test started: each is stopped at the end (SIGTERM, then SIGKILL if
    it ignores it) and its output checked with `assert_json_lines_only`."""

    def __init__(self) -> None:
        self.started: list[DaemonProcess] = []

    def start(
        self, config: Path, env: Mapping[str, str] | None = None, **options: Any
    ) -> DaemonProcess:
        daemon = DaemonProcess(config, env=env, **options)
        self.started.append(daemon)
        return daemon.start()

    def stop_all(self, timeout: float = 30.0) -> None:
        for daemon in self.started:
            try:
                daemon.stop(timeout=timeout)
            except subprocess.TimeoutExpired:  # stop() has killed it
                pytest.fail(f"daemon {daemon.pid} ignored SIGTERM for {timeout}s:\n{daemon.stderr}")
        for daemon in self.started:
            assert_json_lines_only(daemon)

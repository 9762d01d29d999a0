"""The real `refreshd run` as a child process, its JSON lines collected as they come,
and daemon configs written from plain dicts. Used by the daemon and service tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    """Just enough TOML for test configs: strings, numbers, booleans, lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_daemon_config(
    path: Path,
    *,
    servers: list[Mapping[str, Any]],
    credentials: Mapping[str, Mapping[str, Any]],
    daemon: Mapping[str, Any] | None = None,
    client: Mapping[str, Any] | None = None,
    backoff: Mapping[str, Any] | None = None,
    blackouts: list[Mapping[str, Any]] | None = None,
) -> Path:
    """Write a refreshd config; tables are given as dicts, exactly as in TOML."""
    parts: list[str] = []
    for table, values in (("daemon", daemon), ("client", client), ("backoff", backoff)):
        if values:
            parts.append(f"[{table}]\n" + _pairs(values))
    for name, values in credentials.items():
        parts.append(f"[credentials.{name}]\n" + _pairs(values))
    for server in servers:
        parts.append("[[servers]]\n" + _pairs(server))
    for blackout in blackouts or []:
        parts.append("[[blackouts]]\n" + _pairs(blackout))
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def _pairs(values: Mapping[str, Any]) -> str:
    return "\n".join(f"{key} = {toml_value(value)}" for key, value in values.items())


def window_from_now(start_in: float, length: float, *, now: datetime | None = None) -> str:
    """A daily window "HH:MM:SS-HH:MM:SS" (UTC) opening `start_in` seconds from now."""
    base = (now or datetime.now(UTC)).replace(microsecond=0) + timedelta(seconds=1)
    start = base + timedelta(seconds=start_in)
    end = start + timedelta(seconds=length)
    return f"{start:%H:%M:%S}-{end:%H:%M:%S}"


class DaemonProcess:
    """`python -m refreshd run -c CONFIG`, with every stdout line parsed as JSON.

    A line that is not JSON is kept in `bad_lines` (stdout must hold nothing else).
    Every wait is bounded; `stop()` in a `finally` or fixture makes sure no child outlives
    its test.
    """

    def __init__(
        self, config: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.config = config
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            **(env or {}),
        }
        self.cwd = cwd or config.parent
        self.events: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []

    def start(self) -> DaemonProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refreshd", "run", "-c", str(self.config)],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
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
        self, event: str, *, count: int = 1, timeout: float = 15.0, **fields: Any
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

"""Shared fixtures: a running VICIdial simulator, refreshd configs pointing at it, and the
real `refreshd` command run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from refreshd.simulator import API_PATH, Simulator, load_simulator_config

REPO = Path(__file__).resolve().parent.parent
SIMULATOR_CONFIG = REPO / "config" / "simulator.toml"

# The login config/simulator.toml gives refreshd; tests import nothing from here, so
# test modules that need these values name them again.
GOOD_USER = "refreshd"
GOOD_PASSWORD = "demo-pass-123"

# What one [[servers]] spec given to `write_config` may hold, with its default.
_SERVER_DEFAULTS: dict[str, Any] = {
    "name": None,  # required
    "user": GOOD_USER,
    "password": GOOD_PASSWORD,  # written inline in the file (ignored if password_env is set)
    "password_env": None,  # else: the environment variable holding the password
    "path": API_PATH,  # where on the simulator the server's api_url points
    "api_url": None,  # else: a whole URL, e.g. one where nothing listens
    "server_ip": None,  # optional server_ip=
}

RunResult = tuple[int, str, str]
WriteConfig = Callable[..., Path]
RunRefreshd = Callable[..., RunResult]


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A started simulator on 127.0.0.1 (random port) with config/simulator.toml's users
    and servers; stopped after the test."""
    users, servers = load_simulator_config(SIMULATOR_CONFIG)
    with Simulator(host="127.0.0.1", port=0, users=users, servers=servers) as sim:
        yield sim


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    """Where configs from `write_config` keep refreshd's SQLite state."""
    return tmp_path / "state.db"


@pytest.fixture
def write_config(tmp_path: Path, simulator: Simulator, state_path: Path) -> WriteConfig:
    """Factory: `write_config(*servers, timeout="2s", name="refreshd.toml") -> Path`.

    Each server is a dict with "name" and optionally "user", "password" (inline) or
    "password_env", "path" (on the simulator) or "api_url", and "server_ip" (see
    _SERVER_DEFAULTS). Servers with the same login share one [credentials.loginN] table,
    numbered in order of first use. Windows are a placeholder (refresh and check ignore
    them); the metrics endpoint is off; state goes to the `state_path` fixture.
    """

    def write(
        *servers: Mapping[str, Any], timeout: str = "2s", name: str = "refreshd.toml"
    ) -> Path:
        logins: dict[tuple[str, str | None, str | None], str] = {}
        server_tables: list[str] = []
        for given in servers:
            unknown = sorted(set(given) - set(_SERVER_DEFAULTS))
            if unknown or "name" not in given:
                raise ValueError(f"server spec {given!r}: needs 'name'; unknown keys {unknown}")
            spec = {**_SERVER_DEFAULTS, **given}
            env = spec["password_env"]
            login = (spec["user"], None if env else spec["password"], env)
            credentials = logins.setdefault(login, f"login{len(logins) + 1}")
            lines = [
                "[[servers]]",
                f"name = {_q(spec['name'])}",
                f"api_url = {_q(spec['api_url'] or simulator.url + spec['path'])}",
                f"credentials = {_q(credentials)}",
                'windows = ["02:00-04:00"]',
            ]
            if spec["server_ip"]:
                lines.append(f"server_ip = {_q(spec['server_ip'])}")
            server_tables.append("\n".join(lines))
        credential_tables = []
        for (user, password, env), credentials in logins.items():
            secret = f"password_env = {_q(env)}" if env else f"password = {_q(password)}"
            credential_tables.append(f"[credentials.{credentials}]\nuser = {_q(user)}\n{secret}")
        text = "\n\n".join(
            [
                f'[daemon]\nstate_path = {_q(str(state_path))}\nmetrics_listen = ""',
                f"[client]\ntimeout = {_q(timeout)}",
                *credential_tables,
                *server_tables,
            ]
        )
        path = tmp_path / name
        path.write_text(text + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_refreshd(tmp_path: Path) -> RunRefreshd:
    """Run the real command, `python -m refreshd ARGS...`, in tmp_path with a clean
    environment (PATH and LANG only, plus `env`), killed after `timeout` seconds.
    Returns (returncode, stdout, stderr)."""

    def run(
        args: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        timeout: float = 20.0,
    ) -> RunResult:
        # No inherited REFRESHD_* overrides or CREDENTIALS_DIRECTORY from the developer's shell.
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        environ.update(env or {})
        try:
            done = subprocess.run(
                [sys.executable, "-m", "refreshd", *map(str, args)],
                cwd=tmp_path,
                env=environ,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            command = " ".join(map(str, args))
            pytest.fail(f"refreshd {command} ran over {timeout}s; stdout so far: {exc.stdout!r}")
        return done.returncode, done.stdout, done.stderr

    return run


def _q(text: str) -> str:
    """A TOML basic string (the values here hold no quotes or backslashes)."""
    if '"' in text or "\\" in text:
        raise ValueError(f"cannot quote {text!r} simply")
    return f'"{text}"'

"""refreshd configs written as TOML from plain values, windows relative to now, the logins
the simulator knows, and timestamps read back as refreshd writes them."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from refreshd.simulator import API_PATH

# Logins in config/simulator.toml (the `simulator` fixture's users).
GOOD_USER, GOOD_PASSWORD = "refreshd", "demo-pass-123"  # may call server_refresh only
NOAPI_USER, NOAPI_PASSWORD = "noapi", "noapi-pass"  # logs in, API access off

# The two logins as [credentials.good] and [credentials.noapi] tables, the names the
# daemon tests give them.
GOOD_AND_NOAPI: dict[str, dict[str, str]] = {
    "good": {"user": GOOD_USER, "password": GOOD_PASSWORD},
    "noapi": {"user": NOAPI_USER, "password": NOAPI_PASSWORD},
}

# The shape of the conftest fixture `write_config`.
WriteConfig = Callable[..., Path]

# What one server spec given to `write_login_config` may hold, with its default.
_SERVER_DEFAULTS: dict[str, Any] = {
    "name": None,  # required
    "user": GOOD_USER,
    "password": GOOD_PASSWORD,  # written inline in the file (ignored if password_env is set)
    "password_env": None,  # else: the environment variable holding the password
    "path": API_PATH,  # where on the simulator the server's api_url points
    "api_url": None,  # else: a whole URL, e.g. one where nothing listens
    "server_ip": None,  # optional server_ip=
}


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
    databases: Mapping[str, Mapping[str, Any]] | None = None,
    daemon: Mapping[str, Any] | None = None,
    client: Mapping[str, Any] | None = None,
    backoff: Mapping[str, Any] | None = None,
    blackouts: list[Mapping[str, Any]] | None = None,
    notify: list[Mapping[str, Any]] | None = None,
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a refreshd config; tables are given as dicts, exactly as in TOML."""
    parts: list[str] = []
    for table, values in (("daemon", daemon), ("client", client), ("backoff", backoff)):
        if values:
            parts.append(f"[{table}]\n" + _pairs(values))
    for name, values in credentials.items():
        parts.append(f"[credentials.{name}]\n" + _pairs(values))
    for name, values in (databases or {}).items():
        parts.append(f"[databases.{name}]\n" + _pairs(values))
    if state:
        parts.append("[state]\n" + _pairs(state))
    for server in servers:
        parts.append("[[servers]]\n" + _pairs(server))
    for blackout in blackouts or []:
        parts.append("[[blackouts]]\n" + _pairs(blackout))
    for table in notify or []:
        parts.append("[[notify]]\n" + _pairs(table))
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def one_server_config(
    directory: Path,
    api_url: str,
    *,
    window: str = "02:00-04:00",
    password: Mapping[str, str] | None = None,
    daemon: Mapping[str, Any] | None = None,
) -> Path:
    """`directory`/refreshd.toml: one server, east-1, at `api_url`, logging in as the
    simulator's good user (or with `password`: e.g. {"password_env": "NAME"}); the state
    file beside it, metrics off."""
    return write_daemon_config(
        directory / "refreshd.toml",
        daemon={"state_path": str(directory / "state.db"), "metrics_listen": "", **(daemon or {})},
        credentials={"main": {"user": GOOD_USER, **(password or {"password": GOOD_PASSWORD})}},
        servers=[
            {"name": "east-1", "api_url": api_url, "credentials": "main", "windows": [window]}
        ],
    )


def sim_server(
    sim_url: str, name: str, prefix: str, credentials: str, window: str, **extra: Any
) -> dict[str, Any]:
    """A [[servers]] table for the simulator at `sim_url`, its api_url below /`prefix`
    (one path a server, so the simulator counts each one's calls apart)."""
    return {
        "name": name,
        "api_url": f"{sim_url}/{prefix}{API_PATH}",
        "credentials": credentials,
        "windows": [window],
        **extra,
    }


def _pairs(values: Mapping[str, Any]) -> str:
    return "\n".join(f"{key} = {toml_value(value)}" for key, value in values.items())


def write_login_config(
    path: Path,
    *servers: Mapping[str, Any],
    base_url: str,
    state_path: Path,
    timeout: str = "2s",
) -> Path:
    """A config for `refresh` and `check`, from server specs naming their login.

    Each server is a dict with "name" and optionally "user", "password" (inline) or
    "password_env", "path" (below `base_url`) or "api_url", and "server_ip" (see
    _SERVER_DEFAULTS). Servers with the same login share one [credentials.loginN] table,
    numbered in order of first use. Windows are a placeholder (refresh and check ignore
    them); the metrics endpoint is off.
    """
    logins: dict[tuple[str, str | None, str | None], str] = {}
    tables: list[dict[str, Any]] = []
    for given in servers:
        unknown = sorted(set(given) - set(_SERVER_DEFAULTS))
        if unknown or "name" not in given:
            raise ValueError(f"server spec {given!r}: needs 'name'; unknown keys {unknown}")
        spec = {**_SERVER_DEFAULTS, **given}
        env = spec["password_env"]
        login = (spec["user"], None if env else spec["password"], env)
        table = {
            "name": spec["name"],
            "api_url": spec["api_url"] or base_url + spec["path"],
            "credentials": logins.setdefault(login, f"login{len(logins) + 1}"),
            "windows": ["02:00-04:00"],
        }
        if spec["server_ip"]:
            table["server_ip"] = spec["server_ip"]
        tables.append(table)
    credentials = {
        name: {"user": user, **({"password_env": env} if env else {"password": password})}
        for (user, password, env), name in logins.items()
    }
    return write_daemon_config(
        path,
        servers=tables,
        credentials=credentials,
        daemon={"state_path": str(state_path), "metrics_listen": ""},
        client={"timeout": timeout},
    )


def window_from_now(start_in: float, length: float, *, now: datetime | None = None) -> str:
    """A daily window "HH:MM:SS-HH:MM:SS" (UTC) opening `start_in` seconds from now."""
    base = (now or datetime.now(UTC)).replace(microsecond=0) + timedelta(seconds=1)
    start = base + timedelta(seconds=start_in)
    end = start + timedelta(seconds=length)
    return f"{start:%H:%M:%S}-{end:%H:%M:%S}"


def instant(text: str) -> datetime:
    """A timestamp as refreshd writes it (ISO 8601, "Z" for UTC)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))

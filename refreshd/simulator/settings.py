"""The simulator's users.toml: [[users]] and [[servers]] tables, checked, as rule values."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refreshd.simulator.rules import DEFAULT_SERVERS, DEFAULT_USERS, USER_CHARS, SimServer, SimUser

__all__ = ["load_simulator_config"]

_USER_KEYS: dict[str, type] = {
    "user": str,
    "password": str,
    "user_level": int,
    "active": bool,
    "api_access": bool,
    "ast_admin_access": bool,
    "api_functions": list,
    "allowed_ips": list,
}
_SERVER_KEYS: dict[str, type] = {
    "server_ip": str,
    "server_id": str,
    "active": bool,
    "active_asterisk_server": bool,
    "generate_vicidial_conf": bool,
    "keepalive_alive": bool,
}


def load_simulator_config(path: Path) -> tuple[list[SimUser], list[SimServer]]:
    """Users and servers from a TOML file of [[users]] and [[servers]] tables.

    A file without [[users]] (or [[servers]]) gets the defaults: one admin user
    "admin"/"admin1234" (servers 10.0.0.11 and 10.0.0.12)."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the simulator config: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc

    unknown = set(data) - {"users", "servers"}
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            "expected only [[users]] and [[servers]] tables"
        )
    users = [
        _user_from(row, f"{path}: users[{i}]") for i, row in enumerate(_tables(data, "users", path))
    ]
    servers = [
        _server_from(row, f"{path}: servers[{i}]")
        for i, row in enumerate(_tables(data, "servers", path))
    ]
    if "users" not in data:
        users = list(DEFAULT_USERS)
    if "servers" not in data:
        servers = list(DEFAULT_SERVERS)
    _no_duplicates([u.user for u in users], f"{path}: users", "user")
    _no_duplicates([s.server_ip for s in servers], f"{path}: servers", "server_ip")
    return users, servers


def _tables(data: Mapping[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    rows = data.get(key, [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: {key} must be an array of tables, written [[{key}]]")
    return rows


def _checked(row: Mapping[str, Any], keys: Mapping[str, type], where: str) -> None:
    unknown = set(row) - set(keys)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known keys: {', '.join(keys)}"
        )
    for key, value in row.items():
        expected = keys[key]
        # TOML true is a Python bool, which is also an int: keep them apart.
        if isinstance(value, bool) and expected is not bool:
            raise ValueError(f"{where}.{key}: expected {expected.__name__}, got a boolean")
        if not isinstance(value, expected):
            raise ValueError(
                f"{where}.{key}: expected {expected.__name__}, got {type(value).__name__}"
            )


def _strings(row: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = row.get(key, [])
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}.{key}: expected a list of strings")
    return tuple(values)


def _user_from(row: Mapping[str, Any], where: str) -> SimUser:
    _checked(row, _USER_KEYS, where)
    for key in ("user", "password"):
        if key not in row:
            raise ValueError(f"{where}: missing required key {key!r}")
        value = row[key]
        if not value or USER_CHARS.search(value):
            # VICIdial strips other characters before comparing, so such a login never works.
            raise ValueError(
                f"{where}.{key}: {'empty' if not value else 'has characters VICIdial strips'}; "
                "use only letters, digits, '-' and '_'"
            )
    level = row.get("user_level", 9)
    if not 1 <= level <= 9:
        raise ValueError(f"{where}.user_level: {level} is outside VICIdial's 1 to 9")
    functions = _strings(row, "api_functions", where) if "api_functions" in row else None
    ips = _strings(row, "allowed_ips", where)
    for ip in ips:
        if not re.fullmatch(r"[0-9A-Fa-f.:x]+", ip):
            raise ValueError(f"{where}.allowed_ips: {ip!r} is not an IP address or a.b.c.x")
    return SimUser(
        user=row["user"],
        password=row["password"],
        user_level=level,
        active=row.get("active", True),
        api_access=row.get("api_access", True),
        ast_admin_access=row.get("ast_admin_access", True),
        api_functions=functions if functions is not None else ("ALL_FUNCTIONS",),
        allowed_ips=ips,
    )


def _server_from(row: Mapping[str, Any], where: str) -> SimServer:
    _checked(row, _SERVER_KEYS, where)
    if "server_ip" not in row:
        raise ValueError(f"{where}: missing required key 'server_ip'")
    try:
        ipaddress.ip_address(row["server_ip"])
    except ValueError:
        raise ValueError(f"{where}.server_ip: {row['server_ip']!r} is not an IP address") from None
    flags = {key: row[key] for key in _SERVER_KEYS if key in row and key != "server_ip"}
    return SimServer(server_ip=row["server_ip"], **flags)


def _no_duplicates(names: list[str], where: str, key: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}: {key} {name!r} appears twice")
        seen.add(name)

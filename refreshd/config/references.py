"""Rules across the config's tables, on the raw data: unique names, references that exist.

The raw data may have wrong types anywhere; these rules skip what they cannot read, since
the fields' own rules report it.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from refreshd.config.problems import Problem


def raw_field(item: object, key: str) -> object:
    """item[key] of a table not validated yet (a mapping or a model); None if it has none."""
    if isinstance(item, Mapping):
        return item.get(key)
    if isinstance(item, BaseModel):
        return getattr(item, key, None)
    return None


def raw_items(value: object) -> list[tuple[int, object]]:
    """(index, item) of a list not validated yet; none if it is not a list."""
    return list(enumerate(value)) if isinstance(value, list | tuple) else []


def reference_problems(data: object) -> list[Problem]:
    """Every broken rule across tables in the raw config `data`, each at its place."""
    if not isinstance(data, Mapping):
        return []
    servers = raw_items(data.get("servers"))
    problems, first_at = _duplicate_server_names(servers)
    problems += _unknown_tables(servers, data.get("credentials", {}), "credentials")
    problems += _unknown_tables(servers, data.get("databases", {}), "database", "databases")
    problems += _blackout_problems(raw_items(data.get("blackouts")), first_at)
    return problems


def _duplicate_server_names(
    servers: list[tuple[int, object]],
) -> tuple[list[Problem], dict[str, int]]:
    """The repeated server names, and where each name first appears."""
    problems: list[Problem] = []
    first_at: dict[str, int] = {}
    for index, server in servers:
        name = raw_field(server, "name")
        if not isinstance(name, str):
            continue
        if name in first_at:
            problems.append(
                (
                    ("servers", index, "name"),
                    f"duplicate server name {name!r} (first at servers[{first_at[name]}]); "
                    "every server needs its own name",
                )
            )
        else:
            first_at[name] = index
    return problems, first_at


def _unknown_tables(
    servers: list[tuple[int, object]], tables: object, key: str, kind: str | None = None
) -> list[Problem]:
    """Servers whose `key` names a [KIND.NAME] table (kind: key's plural) that does not
    exist: [credentials.NAME] and [databases.NAME]."""
    if not isinstance(tables, Mapping):
        return []
    kind = kind or key
    problems: list[Problem] = []
    known = ", ".join(sorted(str(name) for name in tables)) or "none"
    for index, server in servers:
        wanted = raw_field(server, key)
        if isinstance(wanted, str) and wanted and wanted not in tables:
            problems.append(
                (
                    ("servers", index, key),
                    f"unknown {key} {wanted!r}: add a [{kind}.{wanted}] table "
                    f"or use one that exists ({known})",
                )
            )
    return problems


def _blackout_problems(
    blackouts: list[tuple[int, object]], servers_first_at: Mapping[str, int]
) -> list[Problem]:
    """Repeated blackout names, and blackouts naming a server that does not exist."""
    problems: list[Problem] = []
    first_at: dict[str, int] = {}
    server_names = ", ".join(servers_first_at) or "none"
    for index, blackout in blackouts:
        name = raw_field(blackout, "name")
        if isinstance(name, str):
            if name in first_at:
                problems.append(
                    (
                        ("blackouts", index, "name"),
                        f"duplicate blackout name {name!r} (first at blackouts[{first_at[name]}])",
                    )
                )
            else:
                first_at[name] = index
        for position, wanted in raw_items(raw_field(blackout, "servers")):
            if wanted in ("*", "") or not isinstance(wanted, str):
                continue
            if wanted not in servers_first_at:
                problems.append(
                    (
                        ("blackouts", index, "servers", position),
                        f"unknown server {wanted!r}: name one of the servers "
                        f"({server_names}) or '*' for all",
                    )
                )
    return problems

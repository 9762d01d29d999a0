"""REFRESHD_ environment overrides: `REFRESHD_TABLE__KEY=value` read into the config's shape.

Names are case-insensitive; `__` separates levels (`REFRESHD_CREDENTIALS__EAST__USER`). A
value aimed at a table or a list (`REFRESHD_SERVERS`, `REFRESHD_CREDENTIALS__EAST`) is
JSON; any other value is the string as given, validated by the config model like a value
from the file. Written here rather than taken from pydantic-settings: that package cost every
`refreshd` process a tenth of a second of imports and a second build of the whole config
model, for thirty lines of rules.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from refreshd.config.problems import Problem

ENV_PREFIX = "REFRESHD_"
ENV_DELIMITER = "__"


def environment_overrides(
    environ: Mapping[str, str], model: type[BaseModel], data: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[Problem]]:
    """The overrides that `environ` sets on `model`'s fields, and a problem for each value
    that should be JSON and is not. Variables naming no field of `model` are left alone.
    A table name (`REFRESHD_CREDENTIALS__EAST__USER`) is the file's table of that name in any
    case (`[credentials.East]`), else a new table named in lower case."""
    overrides: dict[str, Any] = {}
    problems: list[Problem] = []
    found = _override_paths(environ, model, data or {})
    # Shorter paths first, so that REFRESHD_DAEMON='{...}' is refined by REFRESHD_DAEMON__X.
    for name, path, target in sorted(found, key=lambda item: len(item[1])):
        if target is _INSIDE_A_LIST:
            problems.append(
                (
                    (name,),
                    "a list cannot be set item by item from the environment; set "
                    f"{ENV_PREFIX}{path[0].upper()} to the whole list as JSON",
                )
            )
            continue
        value: Any = environ[name]
        if _is_structured(target):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                problems.append(
                    (
                        (name,),
                        f"not valid JSON ({error}); a table or list set from the environment "
                        f"must be JSON, or set single keys as {ENV_PREFIX}TABLE__KEY",
                    )
                )
                continue
        _set(overrides, path, value)
    return overrides, problems


_INSIDE_A_LIST = object()


def _override_paths(
    environ: Mapping[str, str], model: type[BaseModel], data: Mapping[str, Any]
) -> list[tuple[str, tuple[str, ...], Any]]:
    """(variable, the config keys it sets, the type its value must have) for each
    REFRESHD_ variable naming a field of `model`."""
    found = []
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].split(ENV_DELIMITER)
        if parts[0].lower() in model.model_fields:
            found.append((name, *_resolve(model, data, parts)))
    return found


def _resolve(model: type[BaseModel], data: Any, parts: list[str]) -> tuple[tuple[str, ...], Any]:
    """The variable's parts as the config's keys (field names lower-case, table names as
    the file writes them, matched without regard to case, new ones lower-case), and the
    type a value there must have: None for a key the model does not know (its validation
    names it), _INSIDE_A_LIST for a path through a list."""
    keys: list[str] = []
    current: Any = model
    for part in parts:
        key = part.lower()
        current = _non_optional(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(key)
            current = field.annotation if field is not None else None
        elif typing.get_origin(current) in (dict, Mapping):
            known = data if isinstance(data, Mapping) else {}
            key = next((k for k in known if str(k).casefold() == part.casefold()), key)
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) in (list, tuple) or current is _INSIDE_A_LIST:
            current = _INSIDE_A_LIST
        else:
            current = None
        keys.append(key)
        data = data.get(key) if isinstance(data, Mapping) else None
    return tuple(keys), current


def _non_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return others[0] if len(others) == 1 else annotation
    return annotation


def _is_structured(annotation: Any) -> bool:
    annotation = _non_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return typing.get_origin(annotation) in (dict, list, tuple, set, frozenset, Mapping)


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):  # a JSON value that was no table: the key wins
            child = node[key] = {}
        node = child
    current = node.get(path[-1])
    if isinstance(current, dict) and isinstance(value, dict):
        current.update(value)
    else:
        node[path[-1]] = value

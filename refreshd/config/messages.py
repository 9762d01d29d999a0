"""Pydantic's errors in an operator's words: 'place: message' lines, with the fix where known."""

from __future__ import annotations

import difflib
import json
import re

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from refreshd.config.credentials import CredentialsConfig
from refreshd.config.databases import DatabaseConfig
from refreshd.config.models import (
    BackoffConfig,
    BlackoutConfig,
    ClientConfig,
    Config,
    DaemonConfig,
    ServerConfig,
)
from refreshd.config.problems import Loc, Problem

EXAMPLE = "config/refreshd.example.toml"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

_TABLES: dict[str, type[BaseModel]] = {
    "daemon": DaemonConfig,
    "client": ClientConfig,
    "backoff": BackoffConfig,
    "credentials": CredentialsConfig,
    "databases": DatabaseConfig,
    "servers": ServerConfig,
    "blackouts": BlackoutConfig,
}
_ARRAYS_OF_TABLES = {"servers", "blackouts"}
_MISSING_HINTS = {
    "servers": "no [[servers]] table; add at least one (see " + EXAMPLE + ")",
    "name": 'missing; add name = "..."',
    "api_url": 'missing; add api_url = "https://HOST/vicidial/non_agent_api.php"',
    "credentials": 'missing; add credentials = "NAME" naming a [credentials.NAME] table',
    "windows": 'missing; add windows = ["mon-fri 02:00-04:00"]',
    "user": 'missing; add user = "..." (the VICIdial API user)',
}


def _table_at(loc: Loc) -> type[BaseModel] | None:
    """The model of the table at loc (config, [daemon], servers[2], ...), if it is one."""
    if not loc:
        return Config
    depth = 2 if loc[0] in ("credentials", "databases", "servers", "blackouts") else 1
    return _TABLES.get(str(loc[0])) if len(loc) == depth else None


def place(loc: Loc) -> str:
    """loc as the operator writes it: 'servers[2].api_url', 'credentials.east', 'config'."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            text += f".{key}" if text else key
    return text or "config"


def describe(detail: ErrorDetails, set_by: str | None = None) -> Problem:
    """One of pydantic's error details as a problem; `set_by`: the environment variable that
    set the value, if one did."""
    loc: Loc = tuple(detail["loc"])
    if loc[-1:] == ("[key]",):  # pydantic's mark for a bad table name ([credentials.NAME])
        loc = loc[:-1]
    message = _message(detail["type"], loc, detail["msg"])
    if set_by:
        message += f" (set by environment variable {set_by})"
    return loc, message


def _message(kind: str, loc: Loc, pydantic_message: str) -> str:
    """pydantic's message in plain words, with the fix where there is an obvious one."""
    last = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    if kind == "missing":
        return _MISSING_HINTS.get(str(last), "missing; this key is required")
    if kind in ("value_error", "assertion_error"):
        return re.sub(r"^(Value|Assertion) error, ", "", pydantic_message)
    if kind == "string_type":
        return "must be a string (in quotes)"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be a whole number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind in ("list_type", "tuple_type"):
        if loc == (last,) and last in _ARRAYS_OF_TABLES:
            return f"must be a list of tables: write each one as [[{last}]], with two brackets"
        return 'must be a list, e.g. ["..."]'
    if kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        return "must be a table"
    if kind == "path_type":
        return "must be a path (a string)"
    if kind == "too_short":
        if last == "windows":
            return 'needs at least one window, e.g. ["mon-fri 02:00-04:00"]'
        if loc == ("servers",):
            return "needs at least one [[servers]] table"
        return "must not be empty"
    if kind in ("greater_than_equal", "less_than_equal") and last == "max_concurrency":
        return "must be a whole number from 1 to 1024"
    return pydantic_message


def _unknown_key_message(loc: Loc) -> str:
    key = str(loc[-1])
    model = _table_at(loc[:-1])
    if model is None:
        return "unknown key"
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; known keys here: {', '.join(known)}"


def format_problems(problems: list[Problem]) -> list[str]:
    """'place: message' lines in the order of the file's tables and keys, duplicates removed."""

    def order(problem: Problem) -> tuple[tuple[int, int, str], ...]:
        loc = problem[0]
        key: list[tuple[int, int, str]] = []
        for depth, part in enumerate(loc):
            if isinstance(part, int):
                key.append((0, part, ""))
                continue
            table = _table_at(loc[:depth])
            fields = list(table.model_fields) if table is not None else []
            key.append((1, fields.index(part) if part in fields else len(fields), part))
        return tuple(key)

    return list(dict.fromkeys(f"{place(loc)}: {text}" for loc, text in sorted(problems, key=order)))

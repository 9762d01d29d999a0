"""Loading the config: the TOML file, REFRESHD_ environment overrides, and ConfigError."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from refreshd.config.environment import ENV_DELIMITER, ENV_PREFIX, environment_overrides
from refreshd.config.messages import EXAMPLE, describe, format_problems
from refreshd.config.models import Config
from refreshd.config.passwords import PasswordSources
from refreshd.config.problems import Loc, Problem
from refreshd.config.references import raw_field

__all__ = ["ENV_PREFIX", "ConfigError", "default_config_path", "load_config", "validate_config"]

DEFAULT_CONFIG_PATH = Path("/etc/refreshd/refreshd.toml")


class ConfigError(Exception):
    """An invalid or unreadable config. `errors`: every problem, each 'place: message'."""

    def __init__(self, errors: Sequence[str], path: Path | None = None) -> None:
        self.errors = list(errors)
        self.path = path
        super().__init__(self.errors, path)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        count = len(self.errors)
        heading = f"{where}{count} config error{'s' if count != 1 else ''}:"
        return "\n  ".join([heading, *self.errors])


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """$REFRESHD_CONFIG if set and not empty, else /etc/refreshd/refreshd.toml."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(f"{ENV_PREFIX}CONFIG", "")
    return Path(chosen) if chosen else DEFAULT_CONFIG_PATH


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file at `path`, apply REFRESHD_ overrides from `environ` (default:
    os.environ; an override wins over the file), and validate everything but the passwords
    password_env and password_file point to: `resolve_passwords` reads those, for the
    commands that call VICIdial.

    Raises ConfigError listing every problem at once; never anything else.
    """
    return validate_config(_read_toml(path), environ=environ, path=path)


def resolve_passwords(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
    urls: bool = False,
) -> Config:
    """`config` with every password read: password_env from `environ` (default:
    os.environ), a relative password_file from $CREDENTIALS_DIRECTORY, else from `path`'s
    directory (the config file's). With `urls` (the daemon: it alone notifies and pings),
    every [[notify]] URL and ping_url_env too, from the same places.

    Raises ConfigError naming each password that cannot be read; never anything else.
    """
    environ = os.environ if environ is None else environ
    sources = PasswordSources(environ, config_dir=path.parent if path is not None else None)
    try:
        config = config.with_passwords(sources)
        return config.with_urls(sources) if urls else config
    except ValidationError as error:
        problems = [describe(detail) for detail in error.errors()]
        raise ConfigError(format_problems(problems), path) from None


def validate_config(
    data: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Config:
    """Validate parsed TOML `data` with REFRESHD_ overrides from `environ` (default:
    os.environ); no password is read (`resolve_passwords`).

    `path` names the file in errors.
    Raises ConfigError listing every problem at once; never anything else.
    """
    environ = os.environ if environ is None else environ
    overrides, problems = _environment_overrides(environ, data)
    # No password is read here; the context tells validators where relative files (a
    # ca_file) are: next to the config file.
    context = PasswordSources(environ, config_dir=path.parent if path is not None else None)
    try:
        config = Config.model_validate(_merge(data, overrides), context=context)
    except ValidationError as error:
        for detail in error.errors():
            set_by = _env_origin(tuple(detail["loc"]), environ, overrides)
            problems.append(describe(detail, set_by))
    else:
        if not problems:
            return config.with_environment_origins(_origins(overrides, environ))
    raise ConfigError(format_problems(problems), path)


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML as a dict; ConfigError saying what to do when there is none."""
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        problem = (
            f"no such file; create it (every key is explained in {EXAMPLE}) or choose "
            f"another one with -c/--config or {ENV_PREFIX}CONFIG"
        )
    except IsADirectoryError:
        problem = "is a directory; point -c/--config at the .toml file inside it"
    except PermissionError:
        problem = (
            "permission denied; make the file readable by the user refreshd runs as "
            "(e.g. chmod 0640 and that user's group)"
        )
    except OSError as error:
        problem = f"cannot read the file: {error.strerror or error}"
    except UnicodeDecodeError as error:
        problem = f"not UTF-8 text (byte {error.start}); save the file as UTF-8"
    except tomllib.TOMLDecodeError as error:
        problem = f"TOML syntax error: {error}; fix the syntax there"
    except ValueError:  # after its subclasses above: a NUL in the path (in-process callers)
        problem = "the path holds a NUL character; give the config file's path"
    else:
        if data:
            return data
        problem = f"the file has no settings; at least one [[servers]] table is needed ({EXAMPLE})"
    raise ConfigError([problem], path)


def _environment_overrides(
    environ: Mapping[str, str], data: Mapping[str, Any]
) -> tuple[dict[str, Any], list[Problem]]:
    overrides, problems = environment_overrides(environ, Config, data)
    return overrides, [*_unknown_env_problems(environ, data), *problems]


def _unknown_env_problems(environ: Mapping[str, str], data: Mapping[str, Any]) -> list[Problem]:
    # REFRESHD_X__Y can only be meant as an override: refuse it when X is no table, or a
    # typo would pass silently. (Not REFRESHD_X alone: password_env variables are often
    # called REFRESHD_SOMETHING.)
    tables = [
        table
        for kind in ("credentials", "databases")
        if isinstance(data.get(kind), Mapping)
        for table in data[kind].values()
    ]
    password_vars = {str(raw_field(table, "password_env")).upper() for table in tables}
    problems: list[Problem] = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or ENV_DELIMITER not in upper:
            continue
        head = upper.removeprefix(ENV_PREFIX).split(ENV_DELIMITER)[0].lower()
        if head in Config.model_fields or upper in password_vars:
            continue
        close = difflib.get_close_matches(head, list(Config.model_fields), n=1)
        hint = f"; did you mean {ENV_PREFIX}{close[0].upper()}{ENV_DELIMITER}...?" if close else ""
        problems.append(((name,), f"unknown table {head!r} in an environment override{hint}"))
    return problems


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """base with override's values winning; tables merge key by key, other values replace."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def _env_origin(loc: Loc, environ: Mapping[str, str], overrides: Mapping[str, Any]) -> str | None:
    """The REFRESHD_ variable that set the value at loc, if one did."""
    names = {name.upper(): name for name in environ}
    for length in range(len(loc), 0, -1):
        path = loc[:length]
        if not all(isinstance(part, str) for part in path) or not _has_path(overrides, path):
            continue
        upper = ENV_PREFIX + ENV_DELIMITER.join(str(part) for part in path).upper()
        if upper in names:
            return names[upper]
    return None


def _origins(overrides: Mapping[str, Any], environ: Mapping[str, str]) -> dict[Loc, str]:
    """Each value the environment set (a leaf of `overrides`, also inside a JSON table),
    with the variable that set it."""
    found: dict[Loc, str] = {}
    todo: list[tuple[Loc, Any]] = [((key,), value) for key, value in overrides.items()]
    while todo:
        loc, value = todo.pop()
        if isinstance(value, Mapping):
            todo.extend(((*loc, key), child) for key, child in value.items())
            continue
        name = _env_origin(loc, environ, overrides)
        if name is not None:
            found[loc] = name
    return found


def _has_path(tree: Mapping[str, Any], path: Loc) -> bool:
    node: object = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True

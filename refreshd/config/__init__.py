"""The config: its models and rules, loading the TOML file with REFRESHD_ overrides, and its errors.

Reading order for a newcomer: `load_config` (file + environment -> `Config`), the models
(one per TOML table, each field's rule next to it), then `ConfigError` and the translation
of pydantic's errors into `place: message` lines.

Passwords: `[credentials.X]` keeps the TOML shape (`password`, `password_env` or
`password_file`); validating a `CredentialsConfig` also reads the secret it points to, so a
`Config` that exists has every password resolved. Code that talks to VICIdial asks
`Config.credentials_for(server)`, which returns a `Credentials` with `user` and
`password: SecretStr`. No password ever appears in an error message, a repr or a str.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import os
import re
import tomllib
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from refreshd.config.fields import (
    LOGIN_KEEPS,
    ApiUrl,
    BlackoutWindow,
    Count,
    Duration,
    IpAddress,
    ListenAddress,
    Name,
    NonEmpty,
    PositiveDuration,
    Source,
    TimeZoneName,
    VicidialUser,
    Window,
    at_least_one,
    between,
    is_known_zone,
    split_listen,
)
from refreshd.durations import format_duration
from refreshd.windows import AbsoluteWindow, WeeklyWindow

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "BackoffConfig",
    "BlackoutConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "Credentials",
    "CredentialsConfig",
    "DaemonConfig",
    "ServerConfig",
    "config_warnings",
    "default_config_path",
    "load_config",
    "validate_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/refreshd/refreshd.toml")
ENV_PREFIX = "REFRESHD_"
_ENV_DELIMITER = "__"
_EXAMPLE = "config/refreshd.example.toml"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_LOCKOUT_WINDOW = timedelta(minutes=15)
_SHORTEST_SENSIBLE_EVERY = timedelta(minutes=5)
_MAX_PASSWORD_FILE = 4096
_API_PATH = "/vicidial/non_agent_api.php"
_DAY = timedelta(days=1)
_MONTH = timedelta(days=30)


# --- Models: one per TOML table ---------------------------------------------------------


class _Table(BaseModel):
    # frozen: values are hashable and comparable, so a reload can tell changed servers
    # from unchanged ones. extra=forbid: a misspelt key is an error, never ignored.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class DaemonConfig(_Table):
    """`[daemon]`: process-wide settings."""

    state_path: Path = Path("/var/lib/refreshd/state.db")
    timezone: TimeZoneName = "UTC"
    max_concurrency: Annotated[Count, Field(ge=1, le=1024)] = 16
    spread: Annotated[Duration, between(timedelta(0), timedelta(days=7))] = timedelta(0)
    metrics_listen: ListenAddress = "127.0.0.1:9464"
    shutdown_grace: Annotated[Duration, between(timedelta(0), timedelta(hours=1))] = timedelta(
        seconds=20
    )
    history_retention: Annotated[
        PositiveDuration, between(timedelta(hours=1), timedelta(days=3650))
    ] = timedelta(days=30)

    @field_validator("state_path", mode="before")
    @classmethod
    def _state_path_not_empty(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty: give the SQLite file's path")
        return value

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) to serve /metrics and /healthz on, brackets of IPv6 removed; None = off."""
        return split_listen(self.metrics_listen) if self.metrics_listen else None


class ClientConfig(_Table):
    """`[client]`: the shared HTTP client and what every request says about its caller."""

    timeout: Annotated[PositiveDuration, between(timedelta(0), timedelta(minutes=10))] = timedelta(
        seconds=10
    )
    verify_tls: bool = True
    source: Source = "refreshd"


class BackoffConfig(_Table):
    """`[backoff]`: how long to wait after each kind of failure (see SPEC.md, Outcomes)."""

    retry_initial: Annotated[PositiveDuration, between(timedelta(0), _DAY)] = timedelta(seconds=30)
    retry_max: Annotated[PositiveDuration, between(timedelta(0), _DAY)] = timedelta(minutes=10)
    suspend_initial: Annotated[PositiveDuration, between(timedelta(0), _MONTH)] = timedelta(hours=1)
    suspend_max: Annotated[PositiveDuration, between(timedelta(0), _MONTH)] = timedelta(hours=24)
    # Short values are allowed (tests need them) but config_warnings() flags them.
    auth_retry: Annotated[PositiveDuration, between(timedelta(0), _MONTH)] = timedelta(hours=6)

    @model_validator(mode="after")
    def _initial_not_above_max(self) -> Self:
        problems: list[_Problem] = []
        for kind in ("retry", "suspend"):
            initial, longest = getattr(self, f"{kind}_initial"), getattr(self, f"{kind}_max")
            if initial > longest:
                problems.append(
                    (
                        (f"{kind}_initial",),
                        f"{format_duration(initial)} is longer than {kind}_max "
                        f"({format_duration(longest)}); the wait starts at {kind}_initial "
                        f"and doubles up to {kind}_max",
                    )
                )
        if problems:
            raise _invalid(problems)
        return self


@dataclass(frozen=True)
class Credentials:
    """A VICIdial login, password resolved: what a request needs. Safe to log or repr."""

    name: str  # the [credentials.NAME] table
    user: str
    password: SecretStr
    source_kind: Literal["inline", "env", "file"]


_PASSWORD_KEYS = ("password", "password_env", "password_file")


def _password_from_env(name: str, environ: Mapping[str, str]) -> SecretStr:
    value = environ.get(name)
    if value is None:
        raise ValueError(
            f"environment variable {name} is not set; set it in refreshd's environment "
            "(systemd Environment= or EnvironmentFile=, docker -e) or use password_file"
        )
    _check_password(value, f"environment variable {name}")
    return SecretStr(value)


def _password_from_file(path: Path, context: _Context) -> SecretStr:
    full = context.password_file_path(path)
    try:
        with full.open("rb") as file:
            raw = file.read(_MAX_PASSWORD_FILE + 1)
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{full} is not UTF-8 text") from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or "cannot be opened"
        raise ValueError(f"cannot read {full}: {reason}{context.file_hint(path)}") from None
    if len(raw) > _MAX_PASSWORD_FILE:
        raise ValueError(f"{full} is larger than 4 KiB: it should hold just the password")
    # `echo pw > file` and editors add one newline; it is not part of the password.
    # A second one stays, and is refused as a filtered character.
    text = text.removesuffix("\n").removesuffix("\r")
    _check_password(text, str(full))
    return SecretStr(text)


def _check_password(secret: str, where: str) -> None:
    # Never quote the secret, nor the characters that are wrong in it.
    if not secret:
        raise ValueError(f"{where} is empty")
    if not LOGIN_KEEPS.fullmatch(secret):
        raise ValueError(
            f"{where} contains characters VICIdial removes before checking the login (it "
            "keeps only letters, digits, '-' and '_'), so this password can never log in; "
            "set a password of only those characters, in VICIdial and here"
        )


class CredentialsConfig(_Table):
    """`[credentials.NAME]`: a user and exactly one of password, password_env, password_file.

    Validation reads the secret (from the validation context's environment, see
    `validate_config`) and keeps it privately; `Config.credentials_for()` hands it out.
    A relative password_file is read from $CREDENTIALS_DIRECTORY (systemd's
    LoadCredential=) when that is set, else from the config file's directory.
    """

    user: VicidialUser
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: Path | None = None

    _secret: SecretStr | None = PrivateAttr(default=None)
    _source_kind: Literal["inline", "env", "file"] = PrivateAttr(default="inline")

    @field_validator("password")
    @classmethod
    def _password_characters(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_password(value.get_secret_value(), "the password")
        return value

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an environment variable name "
                "(letters, digits and '_', not starting with a digit)"
            )
        return value

    @field_validator("password_file", mode="before")
    @classmethod
    def _file_not_empty(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty: give the path of the file holding the password")
        return value

    @model_validator(mode="after")
    def _resolve_password(self, info: ValidationInfo) -> Self:
        given = [name for name in _PASSWORD_KEYS if getattr(self, name) is not None]
        if len(given) != 1:
            found = f" (found {' and '.join(given)})" if given else ""
            raise _error(
                (),
                "give exactly one of password_env (an environment variable), password_file "
                f"(a file, e.g. a systemd credential) or password{found}",
            )
        context = _context(info)
        try:
            if self.password_env is not None:
                secret = _password_from_env(self.password_env, context.environ)
                self._secret, self._source_kind = secret, "env"
            elif self.password_file is not None:
                secret = _password_from_file(self.password_file, context)
                self._secret, self._source_kind = secret, "file"
            else:
                self._secret, self._source_kind = self.password, "inline"
        except ValueError as error:
            raise _error((given[0],), str(error)) from None
        return self

    def resolved(self, name: str) -> Credentials:
        """This table as a `Credentials` value: user plus the resolved password."""
        if self._secret is None:  # only possible if built with model_construct()
            raise ValueError(f"credentials {name!r} were never validated")
        return Credentials(name, self.user, self._secret, self._source_kind)


class ServerConfig(_Table):
    """`[[servers]]`: one VICIdial cluster's API endpoint and its refresh windows."""

    name: Name
    api_url: ApiUrl
    credentials: NonEmpty  # a [credentials.NAME] table
    server_ip: IpAddress | None = None
    timezone: TimeZoneName | None = None  # inside a Config: filled in from daemon.timezone
    windows: Annotated[tuple[Window, ...], AfterValidator(at_least_one)]
    # None: once per window. At least 1 s (the window arithmetic's floor), at most a week.
    every: Annotated[PositiveDuration, between(timedelta(seconds=1), timedelta(days=7))] | None = (
        None
    )

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The server's time zone, in which its windows are wall-clock times."""
        return zoneinfo.ZoneInfo(self.timezone or "UTC")


class BlackoutConfig(_Table):
    """`[[blackouts]]`: times at which no refresh starts, for some servers or all ('*')."""

    name: Name
    servers: Annotated[tuple[NonEmpty, ...], AfterValidator(at_least_one)] = ("*",)
    windows: Annotated[tuple[BlackoutWindow, ...], AfterValidator(at_least_one)]

    def applies_to(self, server_name: str) -> bool:
        return "*" in self.servers or server_name in self.servers


class Config(BaseModel):
    """The whole config file, validated; hashable and comparable.

    Built by `load_config` (file + REFRESHD_ environment) or `validate_config` (a mapping);
    building it directly runs the same checks but applies no REFRESHD_ overrides.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    daemon: DaemonConfig = DaemonConfig()
    client: ClientConfig = ClientConfig()
    backoff: BackoffConfig = BackoffConfig()
    credentials: Mapping[str, CredentialsConfig] = Field(default_factory=dict)
    servers: Annotated[tuple[ServerConfig, ...], AfterValidator(at_least_one)]
    blackouts: tuple[BlackoutConfig, ...] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _check_whole(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # Cross-table rules look at the raw data, so they are reported together with
        # every field error instead of waiting for the fields to be right first.
        problems = _reference_problems(data)
        try:
            config = handler(_with_default_timezones(data))
        except ValidationError as error:
            if not problems:
                raise
            raise _invalid(problems, relay=error) from None
        if problems:
            raise _invalid(problems)
        return config

    def __hash__(self) -> int:
        credentials = tuple(sorted(self.credentials.items()))
        return hash(
            (self.daemon, self.client, self.backoff, credentials, self.servers, self.blackouts)
        )

    def server(self, name: str) -> ServerConfig:
        """The server called `name`; KeyError if there is none."""
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def credentials_for(self, server: ServerConfig | str) -> Credentials:
        """The login (user and resolved password) that `server` (or its name) uses."""
        if isinstance(server, str):
            server = self.server(server)
        return self.credentials[server.credentials].resolved(server.credentials)

    def resolved_credentials(self) -> dict[str, Credentials]:
        """Every [credentials.NAME] table, resolved, by NAME."""
        return {name: table.resolved(name) for name, table in self.credentials.items()}

    def secrets(self) -> frozenset[str]:
        """Every password in plain text: for the log redactor only, never for display."""
        return frozenset(
            c.password.get_secret_value() for c in self.resolved_credentials().values()
        )

    def blackouts_for(self, server_name: str) -> tuple[WeeklyWindow | AbsoluteWindow, ...]:
        """Every blackout window that applies to the server, in config order."""
        found = self._blackouts_by_server.get(server_name)
        if found is not None:
            return found
        return tuple(
            window
            for blackout in self.blackouts
            if blackout.applies_to(server_name)
            for window in blackout.windows
        )

    @functools.cached_property
    def _blackouts_by_server(self) -> dict[str, tuple[WeeklyWindow | AbsoluteWindow, ...]]:
        # Once per config, not once per server and use: planning and fingerprints ask for
        # every server's blackouts, and each ask scanned every blackout's server patterns.
        # (Pydantic compares and hashes fields only, so this cache is not part of either.)
        by_server: dict[str, list[WeeklyWindow | AbsoluteWindow]] = {
            server.name: [] for server in self.servers
        }
        for blackout in self.blackouts:
            if "*" in blackout.servers:
                names: Iterable[str] = by_server
            else:
                names = [name for name in dict.fromkeys(blackout.servers) if name in by_server]
            for name in names:
                by_server[name].extend(blackout.windows)
        return {name: tuple(windows) for name, windows in by_server.items()}


# --- Cross-table rules (on raw data, tolerant of wrong types: the fields report those) ----

_Loc = tuple[str | int, ...]
_Problem = tuple[_Loc, str]


def _field(item: object, key: str) -> object:
    if isinstance(item, Mapping):
        return item.get(key)
    if isinstance(item, BaseModel):
        return getattr(item, key, None)
    return None


def _items(value: object) -> list[tuple[int, object]]:
    return list(enumerate(value)) if isinstance(value, list | tuple) else []


def _reference_problems(data: object) -> list[_Problem]:
    if not isinstance(data, Mapping):
        return []
    servers = _items(data.get("servers"))
    problems, first_at = _duplicate_server_names(servers)
    problems += _unknown_credentials(servers, data.get("credentials", {}))
    problems += _blackout_problems(_items(data.get("blackouts")), first_at)
    return problems


def _duplicate_server_names(
    servers: list[tuple[int, object]],
) -> tuple[list[_Problem], dict[str, int]]:
    """The repeated server names, and where each name first appears."""
    problems: list[_Problem] = []
    first_at: dict[str, int] = {}
    for index, server in servers:
        name = _field(server, "name")
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


def _unknown_credentials(servers: list[tuple[int, object]], credentials: object) -> list[_Problem]:
    """Servers naming a [credentials.NAME] table that does not exist."""
    if not isinstance(credentials, Mapping):
        return []
    problems: list[_Problem] = []
    known = ", ".join(sorted(str(key) for key in credentials)) or "none"
    for index, server in servers:
        wanted = _field(server, "credentials")
        if isinstance(wanted, str) and wanted and wanted not in credentials:
            problems.append(
                (
                    ("servers", index, "credentials"),
                    f"unknown credentials {wanted!r}: add a [credentials.{wanted}] table "
                    f"or use one that exists ({known})",
                )
            )
    return problems


def _blackout_problems(
    blackouts: list[tuple[int, object]], servers_first_at: Mapping[str, int]
) -> list[_Problem]:
    """Repeated blackout names, and blackouts naming a server that does not exist."""
    problems: list[_Problem] = []
    first_at: dict[str, int] = {}
    server_names = ", ".join(servers_first_at) or "none"
    for index, blackout in blackouts:
        name = _field(blackout, "name")
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
        for position, wanted in _items(_field(blackout, "servers")):
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


def _with_default_timezones(data: object) -> object:
    """A copy of data in which servers without a timezone get daemon.timezone."""
    if not isinstance(data, Mapping) or not isinstance(data.get("servers"), list | tuple):
        return data
    daemon = data.get("daemon")
    default = _field(daemon, "timezone") if daemon is not None else DaemonConfig().timezone
    if not is_known_zone(default):
        return data  # daemon.timezone's own error says it; do not repeat it per server
    servers: list[object] = []
    for server in data["servers"]:
        if isinstance(server, Mapping) and "timezone" not in server:
            server = {**server, "timezone": default}
        elif isinstance(server, ServerConfig) and server.timezone is None:
            server = server.model_copy(update={"timezone": default})
        servers.append(server)
    return {**data, "servers": servers}


# --- Validation context: where secrets are read from --------------------------------------


@dataclass(frozen=True)
class _Context:
    environ: Mapping[str, str]
    config_dir: Path | None = None

    def password_file_path(self, path: Path) -> Path:
        if path.is_absolute():
            return path
        credentials_dir = self.environ.get("CREDENTIALS_DIRECTORY")
        if credentials_dir:
            return Path(credentials_dir) / path
        return (self.config_dir or Path.cwd()) / path

    def file_hint(self, path: Path) -> str:
        if path.is_absolute():
            return ""
        if self.environ.get("CREDENTIALS_DIRECTORY"):
            return " (a relative password_file is read from $CREDENTIALS_DIRECTORY)"
        return (
            " (a relative password_file is read from $CREDENTIALS_DIRECTORY when set, "
            "else from the config file's directory)"
        )


def _context(info: ValidationInfo) -> _Context:
    context = info.context
    if isinstance(context, _Context):
        return context
    return _Context(environ=os.environ)


# --- Loading -------------------------------------------------------------------------------


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
    os.environ; an override wins over the file), and validate everything.

    Raises ConfigError listing every problem at once; never anything else.
    """
    return validate_config(_read_toml(path), environ=environ, path=path)


def validate_config(
    data: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Config:
    """Validate parsed TOML `data` with REFRESHD_ overrides from `environ` (default:
    os.environ), which is also where password_env and $CREDENTIALS_DIRECTORY are looked up.

    `path` names the file in errors and anchors relative password_file paths.
    Raises ConfigError listing every problem at once; never anything else.
    """
    environ = os.environ if environ is None else environ
    overrides, problems = _environment_overrides(environ, data)
    context = _Context(environ, config_dir=path.parent if path is not None else None)
    try:
        config = Config.model_validate(_merge(data, overrides), context=context)
    except ValidationError as error:
        problems += [_describe(detail, environ, overrides) for detail in error.errors()]
    else:
        if not problems:
            return config
    raise ConfigError(_format(problems), path)


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML as a dict; ConfigError saying what to do when there is none."""
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        problem = (
            f"no such file; create it (every key is explained in {_EXAMPLE}) or choose "
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
    else:
        if data:
            return data
        problem = f"the file has no settings; at least one [[servers]] table is needed ({_EXAMPLE})"
    raise ConfigError([problem], path)


class _EnvironmentOverrides(BaseSettings, Config):
    """Config's shape as pydantic-settings sees it: REFRESHD_ prefix, '__' between levels.

    Only used to read overrides (Config itself is a plain model: a pydantic-settings model
    re-runs __init__ on validation, which would drop the validation context that carries
    the environment to the password lookups).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=_ENV_DELIMITER, case_sensitive=False
    )


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ.

    Narrow workaround: EnvSettingsSource has no parameter for the mapping, so this
    overrides the one method that reads os.environ; prefix, nested delimiter, JSON for
    tables and lists all stay pydantic-settings' own.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self.case_sensitive:
            return dict(self._environ)
        return {name.lower(): value for name, value in self._environ.items()}


def _environment_overrides(
    environ: Mapping[str, str], data: Mapping[str, Any]
) -> tuple[dict[str, Any], list[_Problem]]:
    problems = _unknown_env_problems(environ, data)
    try:
        overrides = _MappingEnvSource(_EnvironmentOverrides, environ)()
    except (SettingsError, ValueError) as error:
        field = re.search(r'field "([^"]+)"', str(error))
        name = f"{ENV_PREFIX}{field[1].upper()}" if field else "environment"
        cause = error.__cause__
        detail = f" ({cause})" if isinstance(cause, json.JSONDecodeError) else ""
        problems.append(
            (
                (name,),
                f"not valid JSON{detail}; a table or list set from the environment must be "
                f"JSON, or set single keys as {ENV_PREFIX}TABLE__KEY",
            )
        )
        return {}, problems
    return overrides, problems


def _unknown_env_problems(environ: Mapping[str, str], data: Mapping[str, Any]) -> list[_Problem]:
    # REFRESHD_X__Y can only be meant as an override: refuse it when X is no table, or a
    # typo would pass silently. (Not REFRESHD_X alone: password_env variables are often
    # called REFRESHD_SOMETHING.)
    credentials = data.get("credentials")
    tables = credentials.values() if isinstance(credentials, Mapping) else ()
    password_vars = {str(_field(table, "password_env")).upper() for table in tables}
    problems: list[_Problem] = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or _ENV_DELIMITER not in upper:
            continue
        head = upper.removeprefix(ENV_PREFIX).split(_ENV_DELIMITER)[0].lower()
        if head in Config.model_fields or upper in password_vars:
            continue
        close = difflib.get_close_matches(head, list(Config.model_fields), n=1)
        hint = f"; did you mean {ENV_PREFIX}{close[0].upper()}{_ENV_DELIMITER}...?" if close else ""
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


# --- Errors: pydantic's details -> 'place: message' ----------------------------------------


def _error(loc: _Loc, message: str) -> ValidationError:
    return _invalid([(loc, message)])


def _invalid(problems: Iterable[_Problem], relay: ValidationError | None = None) -> ValidationError:
    """A ValidationError carrying our problems (and a caught error's, kept as they were).

    Raised from a validator, pydantic merges these into the outer error with the
    validator's location prepended, so one check can report several places.
    """
    line_errors: list[InitErrorDetails] = []
    if relay is not None:
        for detail in relay.errors(include_url=False):
            context = {**detail.get("ctx", {}), "message": detail["msg"]}
            line_errors.append(
                InitErrorDetails(
                    type=PydanticCustomError(detail["type"], "{message}", context),
                    loc=detail["loc"],
                    input=None,
                )
            )
    for loc, message in problems:
        line_errors.append(
            InitErrorDetails(
                type=PydanticCustomError("refreshd", "{message}", {"message": message}),
                loc=loc,
                input=None,
            )
        )
    return ValidationError.from_exception_data("Config", line_errors, hide_input=True)


_TABLES: dict[str, type[BaseModel]] = {
    "daemon": DaemonConfig,
    "client": ClientConfig,
    "backoff": BackoffConfig,
    "credentials": CredentialsConfig,
    "servers": ServerConfig,
    "blackouts": BlackoutConfig,
}
_ARRAYS_OF_TABLES = {"servers", "blackouts"}
_MISSING_HINTS = {
    "servers": "no [[servers]] table; add at least one (see " + _EXAMPLE + ")",
    "name": 'missing; add name = "..."',
    "api_url": 'missing; add api_url = "https://HOST/vicidial/non_agent_api.php"',
    "credentials": 'missing; add credentials = "NAME" naming a [credentials.NAME] table',
    "windows": 'missing; add windows = ["mon-fri 02:00-04:00"]',
    "user": 'missing; add user = "..." (the VICIdial API user)',
}


def _table_at(loc: _Loc) -> type[BaseModel] | None:
    """The model of the table at loc (config, [daemon], servers[2], ...), if it is one."""
    if not loc:
        return Config
    depth = 2 if loc[0] in ("credentials", "servers", "blackouts") else 1
    return _TABLES.get(str(loc[0])) if len(loc) == depth else None


def _place(loc: _Loc) -> str:
    place = ""
    for part in loc:
        if isinstance(part, int):
            place += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            place += f".{key}" if place else key
    return place or "config"


def _describe(
    detail: ErrorDetails, environ: Mapping[str, str], overrides: Mapping[str, Any]
) -> _Problem:
    loc: _Loc = tuple(detail["loc"])
    message = _message(detail["type"], loc, detail["msg"])
    origin = _env_origin(loc, environ, overrides)
    if origin:
        message += f" (set by environment variable {origin})"
    return loc, message


def _message(kind: str, loc: _Loc, pydantic_message: str) -> str:
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


def _unknown_key_message(loc: _Loc) -> str:
    key = str(loc[-1])
    model = _table_at(loc[:-1])
    if model is None:
        return "unknown key"
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; known keys here: {', '.join(known)}"


def _env_origin(loc: _Loc, environ: Mapping[str, str], overrides: Mapping[str, Any]) -> str | None:
    """The REFRESHD_ variable that set the value at loc, if one did."""
    names = {name.upper(): name for name in environ}
    for length in range(len(loc), 0, -1):
        path = loc[:length]
        if not all(isinstance(part, str) for part in path) or not _has_path(overrides, path):
            continue
        upper = ENV_PREFIX + _ENV_DELIMITER.join(str(part) for part in path).upper()
        if upper in names:
            return names[upper]
    return None


def _has_path(tree: Mapping[str, Any], path: _Loc) -> bool:
    node: object = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _format(problems: list[_Problem]) -> list[str]:
    """'place: message' lines in the order of the file's tables and keys, duplicates removed."""

    def order(problem: _Problem) -> tuple[tuple[int, int, str], ...]:
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

    return list(
        dict.fromkeys(f"{_place(loc)}: {text}" for loc, text in sorted(problems, key=order))
    )


# --- Advice ------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """localhost or a loopback address: traffic there never leaves this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_warnings(config: Config) -> list[str]:
    """Non-fatal advice about a valid config, each 'place: message'."""
    return [
        *_credentials_warnings(config),
        *_client_and_backoff_warnings(config),
        *(
            warning
            for index, server in enumerate(config.servers)
            for warning in _server_warnings(_place(("servers", index)), server)
        ),
    ]


def _credentials_warnings(config: Config) -> list[str]:
    warnings: list[str] = []
    used = {server.credentials for server in config.servers}
    for name, table in config.credentials.items():
        place = _place(("credentials", name))
        if table.password is not None:
            warnings.append(
                f"{place}.password: the password is written in the config file; prefer "
                "password_env or password_file (e.g. a systemd credential)"
            )
        if name not in used:
            warnings.append(f"{place}: not used by any server")
    return warnings


def _client_and_backoff_warnings(config: Config) -> list[str]:
    warnings: list[str] = []
    if not config.client.verify_tls:
        warnings.append(
            "client.verify_tls: false, so TLS certificates are not checked and anyone on the "
            "path can pose as VICIdial and read the password; install the CA instead"
        )
    auth_retry = config.backoff.auth_retry
    if auth_retry < _LOCKOUT_WINDOW:
        warnings.append(
            f"backoff.auth_retry: {format_duration(auth_retry)} is under 15 minutes; "
            "VICIdial locks a login for every use (web screens included) after 10 failed "
            "logins within 15 minutes, and each retry of a wrong password counts"
        )
    return warnings


def _server_warnings(place: str, server: ServerConfig) -> list[str]:
    warnings: list[str] = []
    url = urlsplit(server.api_url)
    # A password sent to this machine itself never crosses a network.
    if url.scheme == "http" and not is_loopback_host(url.hostname or ""):
        warnings.append(f"{place}.api_url: http:// sends the password in clear text; use https://")
    if not url.path.endswith(_API_PATH):
        warnings.append(f"{place}.api_url: does not end in {_API_PATH}, VICIdial's API script")
    if server.every is not None and server.every < _SHORTEST_SENSIBLE_EVERY:
        warnings.append(
            f"{place}.every: {format_duration(server.every)} is under 5 minutes; each "
            "refresh makes every telephony server rebuild and reload its Asterisk "
            "configuration, which takes about a minute"
        )
    return warnings

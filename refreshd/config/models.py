"""The config's models, one per TOML table, with the rules that span a table or the whole file.

Passwords: `[credentials.X]` keeps the TOML shape (`password`, `password_env` or
`password_file`). Validating checks the shape and reads no secret (`status`, `history` and
`plan` run where the daemon's environment and systemd credentials are not); the commands
that call VICIdial ask `Config.with_passwords()` (via `config.resolve_passwords`) for a
copy with each password read. Code that talks to VICIdial asks
`Config.credentials_for(server)`, which returns a `Credentials` with `user` and
`password: SecretStr`. No password ever appears in an error message, a repr or a str.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from refreshd.config.fields import (
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
from refreshd.config.passwords import (
    PasswordSources,
    check_password,
    password_from_env,
    password_from_file,
)
from refreshd.config.problems import Problem, invalid, invalid_at
from refreshd.config.references import raw_field, reference_problems
from refreshd.core.durations import format_duration
from refreshd.core.windows import AbsoluteWindow, WeeklyWindow

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DAY = timedelta(days=1)
_MONTH = timedelta(days=30)
_PASSWORD_KEYS = ("password", "password_env", "password_file")


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
        if isinstance(value, str) and "\x00" in value:  # no file system takes one
            raise ValueError("holds a NUL character (\\u0000): give the SQLite file's path")
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
        problems: list[Problem] = []
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
            raise invalid(problems)
        return self


@dataclass(frozen=True)
class Credentials:
    """A VICIdial login, password resolved: what a request needs. Safe to log or repr."""

    name: str  # the [credentials.NAME] table
    user: str
    password: SecretStr
    source_kind: Literal["inline", "env", "file"]


class CredentialsConfig(_Table):
    """`[credentials.NAME]`: a user and exactly one of password, password_env, password_file.

    Validation checks the shape; an inline password is kept at once, the others are read by
    `with_password()` (see `Config.with_passwords`) and kept privately;
    `Config.credentials_for()` hands them out. A relative password_file is read from
    $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) when that is set, else from the
    config file's directory.
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
            check_password(value.get_secret_value(), "the password")
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
    def _one_password_source(self) -> Self:
        given = [name for name in _PASSWORD_KEYS if getattr(self, name) is not None]
        if len(given) != 1:
            found = f" (found {' and '.join(given)})" if given else ""
            raise invalid_at(
                (),
                "give exactly one of password_env (an environment variable), password_file "
                f"(a file, e.g. a systemd credential) or password{found}",
            )
        if self.password is not None:
            self._secret, self._source_kind = self.password, "inline"
        return self

    @property
    def password_key(self) -> str:
        """The key that gives the password: password_env, password_file or password."""
        return next(key for key in _PASSWORD_KEYS if getattr(self, key) is not None)

    def with_password(self, sources: PasswordSources) -> CredentialsConfig:
        """A copy holding the password read from `sources`; ValueError saying why it cannot
        be read (the place is `password_key`)."""
        if self._secret is not None:
            return self
        copy = self.model_copy()
        if self.password_env is not None:
            copy._secret = password_from_env(self.password_env, sources.environ)
            copy._source_kind = "env"
        elif self.password_file is not None:
            copy._secret = password_from_file(self.password_file, sources)
            copy._source_kind = "file"
        return copy

    def resolved(self, name: str) -> Credentials:
        """This table as a `Credentials` value: user plus the resolved password."""
        if self._secret is None:
            # A bug, not an operator's error: the command asked for no passwords.
            raise ValueError(f"credentials {name!r}: password not read (see with_passwords)")
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
    credentials: Mapping[Name, CredentialsConfig] = Field(default_factory=dict)
    servers: Annotated[tuple[ServerConfig, ...], AfterValidator(at_least_one)]
    blackouts: tuple[BlackoutConfig, ...] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _check_whole(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # Cross-table rules look at the raw data, so they are reported together with
        # every field error instead of waiting for the fields to be right first.
        problems = reference_problems(data)
        try:
            config = handler(_with_default_timezones(data))
        except ValidationError as error:
            if not problems:
                raise
            raise invalid(problems, relay=error) from None
        if problems:
            raise invalid(problems)
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

    def with_passwords(self, sources: PasswordSources) -> Config:
        """A copy with every password read from `sources`; a ValidationError, as validation
        raises, naming each key whose password cannot be read."""
        tables: dict[str, CredentialsConfig] = {}
        problems: list[Problem] = []
        for name, table in self.credentials.items():
            try:
                tables[name] = table.with_password(sources)
            except ValueError as error:
                problems.append((("credentials", name, table.password_key), str(error)))
        if problems:
            raise invalid(problems)
        return self.model_copy(update={"credentials": tables})

    def secrets(self) -> frozenset[str]:
        """Every password read so far, in plain text: for the log redactor only, never for
        display."""
        return frozenset(
            table._secret.get_secret_value()
            for table in self.credentials.values()
            if table._secret is not None
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


def _with_default_timezones(data: object) -> object:
    """A copy of data in which servers without a timezone get daemon.timezone."""
    if not isinstance(data, Mapping) or not isinstance(data.get("servers"), list | tuple):
        return data
    daemon = data.get("daemon")
    default = raw_field(daemon, "timezone") if daemon is not None else DaemonConfig().timezone
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

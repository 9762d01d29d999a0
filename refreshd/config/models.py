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
import zoneinfo
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
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

from refreshd.config.credentials import Credentials, CredentialsConfig, PasswordTable, Table
from refreshd.config.databases import DatabaseConfig
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
    ProxyUrl,
    Source,
    TimeZoneName,
    Window,
    at_least_one,
    between,
    ca_file,
    is_known_zone,
    not_blank_path,
    proxy_secrets,
    proxy_shown,
    split_listen,
)
from refreshd.config.notify import NotifyConfig, check_url, env_name, read_url, unique_names
from refreshd.config.passwords import (
    PasswordSources,
    password_sources,
)
from refreshd.config.problems import Problem, invalid, invalid_at
from refreshd.config.references import raw_field, reference_problems
from refreshd.config.state import StateConfig
from refreshd.core.durations import format_duration
from refreshd.core.verification import (
    VERIFY_TIMEOUT_DEFAULT,
    VERIFY_TIMEOUT_MAX,
    VERIFY_TIMEOUT_MIN,
)
from refreshd.core.windows import AbsoluteWindow, WeeklyWindow

_DAY = timedelta(days=1)
_MONTH = timedelta(days=30)


def _checked_ca_file(value: Path, info: ValidationInfo) -> Path:
    # A relative path is next to the config file, whose directory the context knows.
    return ca_file(value, password_sources(info).config_dir)


CaFile = Annotated[Path, BeforeValidator(not_blank_path), AfterValidator(_checked_ca_file)]


class DaemonConfig(Table):
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


class ClientConfig(Table):
    """`[client]`: the shared HTTP client and what every request says about its caller."""

    timeout: Annotated[PositiveDuration, between(timedelta(0), timedelta(minutes=10))] = timedelta(
        seconds=10
    )
    verify_tls: bool = True
    ca_file: CaFile | None = None  # the CA (PEM) to trust instead of the system's store
    # The one way to use a proxy: HTTP(S)_PROXY in the environment are ignored (client.py).
    proxy: ProxyUrl | None = None
    source: Source = "refreshd"

    @property
    def proxy_shown(self) -> str:
        """The proxy without its credentials, or "none": for logs and `check`."""
        return proxy_shown(self.proxy)


class BackoffConfig(Table):
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


class ServerConfig(Table):
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
    ca_file: CaFile | None = None  # this server's CA, instead of [client] ca_file
    database: NonEmpty | None = None  # a [databases.NAME] table: verify each refresh
    verify_timeout: Annotated[PositiveDuration, between(VERIFY_TIMEOUT_MIN, VERIFY_TIMEOUT_MAX)] = (
        VERIFY_TIMEOUT_DEFAULT
    )
    # A dead-man's switch (config/notify.py): a secret, read as a password is.
    ping_url: SecretStr | None = None
    ping_url_env: Annotated[str | None, AfterValidator(env_name)] = None
    _ping: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_ping_url(self) -> Self:
        if self.ping_url is not None and self.ping_url_env is not None:
            raise invalid_at((), "give at most one of ping_url and ping_url_env")
        if self.ping_url is not None:
            check_url(self.ping_url.get_secret_value(), "ping_url")
        self._ping = self.ping_url
        return self

    @property
    def ping_secret(self) -> str | None:
        """The ping URL in plain text once read: for the sender and the redactor only."""
        return None if self._ping is None else self._ping.get_secret_value()

    def with_ping_url(self, sources: PasswordSources) -> Self:
        """A copy holding ping_url_env's URL; ValueError saying why it cannot be read."""
        if self._ping is not None or self.ping_url_env is None:
            return self
        copy = self.model_copy()
        copy._ping = read_url(None, self.ping_url_env, None, sources)
        return copy

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The server's time zone, in which its windows are wall-clock times."""
        return zoneinfo.ZoneInfo(self.timezone or "UTC")


class BlackoutConfig(Table):
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
    databases: Mapping[Name, DatabaseConfig] = Field(default_factory=dict)
    state: StateConfig | None = None  # a shared store; None: SQLite at daemon.state_path
    servers: Annotated[tuple[ServerConfig, ...], AfterValidator(at_least_one)]
    blackouts: tuple[BlackoutConfig, ...] = ()
    notify: Annotated[tuple[NotifyConfig, ...], AfterValidator(unique_names)] = ()
    # Which values a REFRESHD_ variable set, by their path: advice must not blame the file
    # for a secret the environment holds.
    _set_by_environment: Mapping[tuple[str | int, ...], str] = PrivateAttr(default_factory=dict)

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
        databases = tuple(sorted(self.databases.items()))
        return hash(
            (
                self.daemon,
                self.client,
                self.backoff,
                credentials,
                databases,
                self.state,
                self.servers,
                self.blackouts,
                self.notify,
            )
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

    def verify_for(self, server: ServerConfig) -> bool | str:
        """What the server's TLS certificate is checked against: its CA file, else the
        client's, else the system's trust store (True); False with verify_tls off."""
        if not self.client.verify_tls:
            return False
        chosen = server.ca_file or self.client.ca_file
        return str(chosen) if chosen is not None else True

    def with_passwords(self, sources: PasswordSources) -> Config:
        """A copy with every password read from `sources` (credentials and databases); a
        ValidationError, as validation raises, naming each key whose password cannot be read."""
        read: dict[str, dict[str, PasswordTable]] = {"credentials": {}, "databases": {}}
        problems: list[Problem] = []
        for kind, found in read.items():
            tables: Mapping[str, PasswordTable] = getattr(self, kind)
            for name, table in tables.items():
                try:
                    found[name] = table.with_password(sources)
                except ValueError as error:
                    problems.append(((kind, name, table.password_key), str(error)))
        update: dict[str, object] = dict(read)
        if self.state is not None:  # [state]'s password too, when it names one
            try:
                update["state"] = self.state.with_password(sources)
            except ValueError as error:
                problems.append((("state", self.state.password_key), str(error)))
        if problems:
            raise invalid(problems)
        return self.model_copy(update=update)

    def with_urls(self, sources: PasswordSources) -> Config:
        """A copy with every [[notify]] URL and ping_url_env read from `sources`; a
        ValidationError naming each key whose URL cannot be read (never the URL)."""
        problems: list[Problem] = []
        notify: list[NotifyConfig] = []
        servers: list[ServerConfig] = []
        for index, table in enumerate(self.notify):
            try:
                notify.append(table.with_url(sources))
            except ValueError as error:
                problems.append((("notify", index, table.url_key), str(error)))
        for index, server in enumerate(self.servers):
            try:
                servers.append(server.with_ping_url(sources))
            except ValueError as error:
                problems.append((("servers", index, "ping_url_env"), str(error)))
        if problems:
            raise invalid(problems)
        return self.model_copy(update={"notify": tuple(notify), "servers": tuple(servers)})

    def with_environment_origins(self, origins: Mapping[tuple[str | int, ...], str]) -> Config:
        """A copy that knows which REFRESHD_ variable set each value at a path in `origins`."""
        copy = self.model_copy()
        copy._set_by_environment = dict(origins)
        return copy

    def set_by_environment(self, *path: str) -> str | None:
        """The REFRESHD_ variable that set the value at `path` (`"client", "proxy"`), None
        when the file (or a default) did."""
        return self._set_by_environment.get(path)

    def secrets(self) -> frozenset[str]:
        """Every password read so far (and the proxy's), in plain text: for the log
        redactor only, never for display."""
        tables: list[PasswordTable] = [*self.credentials.values(), *self.databases.values()]
        tables += [self.state] if self.state is not None else []
        passwords = {table.secret for table in tables if table.secret is not None}
        urls = {table.secret for table in self.notify} | {s.ping_secret for s in self.servers}
        return frozenset(passwords) | {u for u in urls if u} | proxy_secrets(self.client.proxy)

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

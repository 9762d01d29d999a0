"""The config: the example loads, every refusal of SPEC.md names its place, all errors come
at once, REFRESHD_ overrides win, passwords resolve and never leak; and durations."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refreshd.config import (
    DEFAULT_CONFIG_PATH,
    BackoffConfig,
    BlackoutConfig,
    ClientConfig,
    Config,
    ConfigError,
    CredentialsConfig,
    DaemonConfig,
    ServerConfig,
    config_warnings,
    default_config_path,
    load_config,
    resolve_passwords,
    validate_config,
)
from refreshd.core.durations import format_duration, parse_duration
from refreshd.core.windows import AbsoluteWindow, WeeklyWindow
from tests.support.repo import EXAMPLE_CONFIG

PASSWORD = "Hunter2-secret_pw"
BAD_PASSWORD = "Hunter2 secret!pw"  # has characters VICIdial filters out
ENV = {"REFRESHD_EAST_PASSWORD": PASSWORD}


def validated(
    data: Mapping[str, Any], *, environ: Mapping[str, str] | None = None, path: Path | None = None
) -> Config:
    """The daemon's way: the shape validated, then every password read."""
    config = validate_config(data, environ=environ, path=path)
    return resolve_passwords(config, environ=environ, path=path)


def loaded(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """The daemon's way: the file loaded, then every password read."""
    return resolve_passwords(load_config(path, environ), environ=environ, path=path)


def base() -> dict[str, Any]:
    """A small valid config, as tomllib would return it."""
    return {
        "credentials": {"east": {"user": "refreshd", "password_env": "REFRESHD_EAST_PASSWORD"}},
        "servers": [
            {
                "name": "east-1",
                "api_url": "https://dialer-east.example.com/vicidial/non_agent_api.php",
                "credentials": "east",
                "windows": ["mon-fri 02:00-04:00"],
            }
        ],
    }


def with_server(data: dict[str, Any], **fields: Any) -> dict[str, Any]:
    server = {**data["servers"][0], **fields}
    return {**data, "servers": [*data["servers"], server]}


def errors_of(data: Mapping[str, Any], environ: Mapping[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validated(data, environ=environ)
    return caught.value.errors


def places(errors: list[str]) -> list[str]:
    return [error.split(": ", 1)[0] for error in errors]


def write(tmp_path: Path, text: str, name: str = "refreshd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- The example file ----------------------------------------------------------------------


def test_example_config_loads_with_the_environment_it_documents(tmp_path: Path) -> None:
    (tmp_path / "east.password").write_text(PASSWORD)
    (tmp_path / "west.password").write_text("westPW_1\n")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}

    config = loaded(EXAMPLE_CONFIG, environ=environ)

    assert [server.name for server in config.servers] == ["east-1", "west-1", "west-2"]
    assert config.credentials_for("east-1").password.get_secret_value() == PASSWORD
    assert config.credentials_for("west-1").password.get_secret_value() == "westPW_1"
    assert config_warnings(config) == []


def test_example_config_states_its_required_environment_at_the_top() -> None:
    header = EXAMPLE_CONFIG.read_text().split("[daemon]")[0]
    assert "CREDENTIALS_DIRECTORY" in header
    assert '"east.password"' in header
    assert '"west.password"' in header


def test_example_config_shows_every_key_of_every_table() -> None:
    text = EXAMPLE_CONFIG.read_text()
    data = tomllib.loads(text)
    # A key without a default to write (a path, a URL) is shown as a commented-out line.
    shown = set(re.findall(r"^# (\w+) = ", text, re.MULTILINE))
    assert set(data["daemon"]) == set(DaemonConfig.model_fields)
    assert set(data["client"]) | shown >= set(ClientConfig.model_fields)
    assert set(data["backoff"]) == set(BackoffConfig.model_fields)
    assert set().union(*data["servers"]) | shown >= set(ServerConfig.model_fields)
    assert set().union(*data["blackouts"]) == set(BlackoutConfig.model_fields)
    for key in CredentialsConfig.model_fields:  # `password` appears in a comment only
        assert key in text


def test_example_config_gives_the_defaults_for_daemon_client_and_backoff() -> None:
    data = tomllib.loads(EXAMPLE_CONFIG.read_text())
    defaults = validated(base(), environ=ENV)
    for table in ("daemon", "client", "backoff"):
        written = validated({**base(), table: data[table]}, environ=ENV)
        assert getattr(written, table) == getattr(defaults, table), table


# --- Defaults and helpers ------------------------------------------------------------------


def test_a_minimal_config_gets_the_documented_defaults() -> None:
    config = validated(base(), environ=ENV)

    assert config.daemon == DaemonConfig(
        state_path=Path("/var/lib/refreshd/state.db"),
        timezone="UTC",
        max_concurrency=16,
        spread=timedelta(0),
        metrics_listen="127.0.0.1:9464",
        shutdown_grace=timedelta(seconds=20),
        history_retention=timedelta(days=30),
    )
    assert config.client == ClientConfig(
        timeout=timedelta(seconds=10), verify_tls=True, source="refreshd"
    )
    assert config.backoff == BackoffConfig(
        retry_initial=timedelta(seconds=30),
        retry_max=timedelta(minutes=10),
        suspend_initial=timedelta(hours=1),
        suspend_max=timedelta(hours=24),
        auth_retry=timedelta(hours=6),
    )
    assert config.blackouts == ()
    assert config.servers[0].every is None
    assert config.servers[0].server_ip is None


def test_a_server_without_timezone_uses_the_daemon_timezone() -> None:
    data = {**base(), "daemon": {"timezone": "Europe/Paris"}}
    data = with_server(data, name="east-2", timezone="America/New_York")

    config = validated(data, environ=ENV)

    assert config.server("east-1").zone == ZoneInfo("Europe/Paris")
    assert config.server("east-2").zone == ZoneInfo("America/New_York")


def test_windows_are_kept_parsed() -> None:
    config = validated(base(), environ=ENV)
    (window,) = config.server("east-1").windows
    assert window == WeeklyWindow(
        days=frozenset(range(5)), start=dt.time(2), end=dt.time(4), text="mon-fri 02:00-04:00"
    )


def test_server_lookup_by_name_raises_key_error_when_absent() -> None:
    config = validated(base(), environ=ENV)
    assert config.server("east-1").api_url.startswith("https://")
    with pytest.raises(KeyError):
        config.server("nope")


def test_credentials_for_a_server_give_user_and_password() -> None:
    config = validated(base(), environ=ENV)
    credentials = config.credentials_for(config.server("east-1"))
    assert credentials.name == "east"
    assert credentials.user == "refreshd"
    assert credentials.password.get_secret_value() == PASSWORD
    assert credentials.source_kind == "env"
    assert config.secrets() == {PASSWORD}


def test_blackouts_apply_to_their_servers_and_star_to_all() -> None:
    data = with_server(base(), name="east-2")
    data["blackouts"] = [
        {"name": "all", "windows": ["mon-fri 09:00-17:00"]},
        {"name": "one", "servers": ["east-2"], "windows": ["2026-12-24T00:00/2026-12-27T00:00"]},
    ]

    config = validated(data, environ=ENV)

    assert [w.text for w in config.blackouts_for("east-1")] == ["mon-fri 09:00-17:00"]
    assert [type(w) for w in config.blackouts_for("east-2")] == [WeeklyWindow, AbsoluteWindow]


def test_equal_configs_are_equal_and_hash_alike() -> None:
    first = validated(base(), environ=ENV)
    second = validated(base(), environ=ENV)
    assert first == second
    assert hash(first) == hash(second)
    assert first.servers[0] in {second.servers[0]}


def test_a_changed_server_compares_different_and_the_others_equal() -> None:
    old = validated(with_server(base(), name="east-2"), environ=ENV)
    data = with_server(base(), name="east-2", windows=["sun 01:00-02:00"])
    new = validated(data, environ=ENV)
    assert old.server("east-1") == new.server("east-1")
    assert old.server("east-2") != new.server("east-2")


def test_a_changed_password_makes_the_credentials_differ() -> None:
    old = validated(base(), environ=ENV)
    new = validated(base(), environ={"REFRESHD_EAST_PASSWORD": "another-one"})
    assert old.credentials["east"] != new.credentials["east"]
    assert old.servers == new.servers


def test_config_is_frozen() -> None:
    config = validated(base(), environ=ENV)
    with pytest.raises(ValueError, match="frozen"):
        config.servers[0].name = "other"  # type: ignore[misc]


def test_default_config_path_is_etc_unless_refreshd_config_is_set() -> None:
    assert default_config_path({}) == DEFAULT_CONFIG_PATH == Path("/etc/refreshd/refreshd.toml")
    assert default_config_path({"REFRESHD_CONFIG": ""}) == DEFAULT_CONFIG_PATH
    assert default_config_path({"REFRESHD_CONFIG": "/tmp/x.toml"}) == Path("/tmp/x.toml")


# --- Refusals of SPEC.md, each at its place -----------------------------------------------


def test_duplicate_server_names_are_refused() -> None:
    errors = errors_of(with_server(base()))
    assert errors == [
        "servers[1].name: duplicate server name 'east-1' (first at servers[0]); "
        "every server needs its own name"
    ]


def test_unknown_credentials_reference_is_refused() -> None:
    errors = errors_of(with_server(base(), name="east-2", credentials="west"))
    assert places(errors) == ["servers[1].credentials"]
    assert "unknown credentials 'west'" in errors[0]
    assert "[credentials.west]" in errors[0]


@pytest.mark.parametrize(
    ("data", "place"),
    [
        ({**base(), "daemon": {"timezone": "Mars/Olympus"}}, "daemon.timezone"),
        (with_server(base(), name="east-2", timezone="Mars/Olympus"), "servers[1].timezone"),
    ],
)
def test_unknown_time_zone_is_refused(data: dict[str, Any], place: str) -> None:
    errors = errors_of(data)
    assert places(errors) == [place]
    assert "unknown time zone 'Mars/Olympus'" in errors[0]


def test_a_misspelt_time_zone_gets_a_suggestion() -> None:
    errors = errors_of({**base(), "daemon": {"timezone": "America/NewYork"}})
    assert errors == [
        "daemon.timezone: unknown time zone 'America/NewYork'; did you mean 'America/New_York'?"
    ]


def test_empty_windows_are_refused() -> None:
    errors = errors_of(with_server(base(), name="east-2", windows=[]))
    assert places(errors) == ["servers[1].windows"]
    assert "at least one window" in errors[0]


def test_missing_windows_are_refused() -> None:
    data = base()
    del data["servers"][0]["windows"]
    assert places(errors_of(data)) == ["servers[0].windows"]


def test_bad_window_text_is_refused_at_its_place() -> None:
    data = with_server(base(), name="east-2", windows=["mon-fri 02:00-04:00", "mon-fro 1-2"])
    errors = errors_of(data)
    assert places(errors) == ["servers[1].windows[1]"]
    assert "unknown day 'fro'" in errors[0]


def test_bad_blackout_window_is_refused_at_its_place() -> None:
    data = {**base(), "blackouts": [{"name": "x", "windows": ["2026-12-27T00:00/2026-12-24"]}]}
    assert places(errors_of(data)) == ["blackouts[0].windows[0]"]


def test_a_blackout_naming_an_unknown_server_is_refused() -> None:
    data = {**base(), "blackouts": [{"name": "x", "servers": ["east-9"], "windows": ["1:00-2:00"]}]}
    errors = errors_of(data)
    assert places(errors) == ["blackouts[0].servers[0]"]
    assert "unknown server 'east-9'" in errors[0]


@pytest.mark.parametrize("source", ["x", "x-", "-_-", "", "a" * 21, "ab-" * 11])
def test_source_with_too_few_or_too_many_letters_and_digits_is_refused(source: str) -> None:
    errors = errors_of({**base(), "client": {"source": source}})
    assert places(errors) == ["client.source"]
    assert "VICIdial drops every other character" in errors[0]
    assert "2 to 20" in errors[0]


@pytest.mark.parametrize("source", ["ab", "a-b", "refreshd", "a" * 20, "ops.refresh-d"])
def test_source_counts_only_letters_and_digits(source: str) -> None:
    config = validated({**base(), "client": {"source": source}}, environ=ENV)
    assert config.client.source == source


@pytest.mark.parametrize("user", ["ref resh", "refreshd!", "réfreshd", "a.b", ""])
def test_user_with_characters_vicidial_filters_is_refused(user: str) -> None:
    data = base()
    data["credentials"]["east"]["user"] = user
    assert places(errors_of(data)) == ["credentials.east.user"]


def test_inline_password_with_filtered_characters_is_refused_as_never_able_to_log_in() -> None:
    data = base()
    data["credentials"]["east"] = {"user": "refreshd", "password": BAD_PASSWORD}
    errors = errors_of(data)
    assert places(errors) == ["credentials.east.password"]
    assert "can never log in" in errors[0]


def test_env_password_with_filtered_characters_is_refused() -> None:
    errors = errors_of(base(), environ={"REFRESHD_EAST_PASSWORD": BAD_PASSWORD})
    assert places(errors) == ["credentials.east.password_env"]
    assert "can never log in" in errors[0]


@pytest.mark.parametrize(
    ("data", "place", "suggestion"),
    [
        ({**base(), "deamon": {}}, "deamon", "'daemon'"),
        ({**base(), "daemon": {"timezon": "UTC"}}, "daemon.timezon", "'timezone'"),
        ({**base(), "client": {"verify_ssl": False}}, "client.verify_ssl", "'verify_tls'"),
        ({**base(), "backoff": {"retry_maximum": "1m"}}, "backoff.retry_maximum", "'retry_max'"),
        (
            {**base(), "credentials": {"east": {"user": "u", "pasword_env": "X"}}},
            "credentials.east.pasword_env",
            "'password_env'",
        ),
        (with_server(base(), name="east-2", evry="1h"), "servers[1].evry", "'every'"),
        (
            {**base(), "blackouts": [{"name": "b", "window": ["1:00-2:00"], "windows": ["x"]}]},
            "blackouts[0].window",
            "'windows'",
        ),
    ],
)
def test_unknown_keys_are_refused_at_every_level(
    data: dict[str, Any], place: str, suggestion: str
) -> None:
    errors = errors_of(data)
    matching = [error for error in errors if error.startswith(f"{place}: ")]
    assert matching == [f"{place}: unknown key; did you mean {suggestion}?"]


def test_an_unknown_key_without_a_close_match_lists_the_known_keys() -> None:
    errors = errors_of({**base(), "client": {"colour": "blue"}})
    assert errors == [
        "client.colour: unknown key; known keys here: timeout, verify_tls, ca_file, proxy, source"
    ]


def test_a_duplicate_name_an_unknown_zone_and_a_typo_are_reported_together() -> None:
    data = with_server(base(), timezone="Mars/Olympus")  # same name as servers[0]
    data["servers"][0]["nmae"] = "typo"

    errors = errors_of(data)

    assert places(errors) == ["servers[0].nmae", "servers[1].name", "servers[1].timezone"]
    assert "did you mean 'name'?" in errors[0]


def test_errors_are_plain_sentences_without_pydantic_noise() -> None:
    data = with_server(base(), name="bad name", every="soon", windows="02:00-03:00")
    data["daemon"] = {"max_concurrency": 0, "verify": 1}
    with pytest.raises(ConfigError) as caught:
        validated(data, environ=ENV)
    text = str(caught.value)
    for noise in ("pydantic", "errors.pydantic.dev", "Value error", "Traceback", "input_value"):
        assert noise not in text


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://dialer.example.com/vicidial/non_agent_api.php?user=x", "query string"),
        ("https://user:pw@dialer.example.com/vicidial/non_agent_api.php", "user or password"),
        ("ftp://dialer.example.com/vicidial/non_agent_api.php", "https://"),
        ("https:///vicidial/non_agent_api.php", "no host"),
        ("dialer.example.com/vicidial/non_agent_api.php", "https://"),
        ("https://dialer.example.com:99999/x.php", "not a valid URL"),
    ],
)
def test_bad_api_urls_are_refused(url: str, words: str) -> None:
    errors = errors_of(with_server(base(), name="east-2", api_url=url))
    assert places(errors) == ["servers[1].api_url"]
    assert words in errors[0]


@pytest.mark.parametrize("name", ["", "east 1", "east/1", "ëast"])
def test_server_names_use_only_letters_digits_dot_dash_underscore(name: str) -> None:
    assert places(errors_of(with_server(base(), name=name))) == ["servers[1].name"]


def test_server_ip_must_be_an_ip_address() -> None:
    assert places(errors_of(with_server(base(), name="e2", server_ip="dialer-1"))) == [
        "servers[1].server_ip"
    ]
    config = validated(with_server(base(), name="e2", server_ip="fd00::11"), environ=ENV)
    assert config.server("e2").server_ip == "fd00::11"


@pytest.mark.parametrize("every", ["0s", 0, "-1m", "often"])
def test_every_must_be_a_positive_duration(every: object) -> None:
    assert places(errors_of(with_server(base(), name="e2", every=every))) == ["servers[1].every"]


@pytest.mark.parametrize("value", [0, 1025, True, "many", 2.5])
def test_max_concurrency_is_a_whole_number_from_1_to_1024(value: object) -> None:
    errors = errors_of({**base(), "daemon": {"max_concurrency": value}})
    assert places(errors) == ["daemon.max_concurrency"]


@pytest.mark.parametrize(
    ("listen", "address"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:80", ("::1", 80)), ("", None)],
)
def test_metrics_listen_is_host_port_or_empty_for_off(
    listen: str, address: tuple[str, int] | None
) -> None:
    config = validated({**base(), "daemon": {"metrics_listen": listen}}, environ=ENV)
    assert config.daemon.metrics_address == address


@pytest.mark.parametrize("listen", ["9464", "localhost", ":9464", "host:port", "h:70000", "::1:80"])
def test_metrics_listen_refuses_what_is_not_host_port(listen: str) -> None:
    errors = errors_of({**base(), "daemon": {"metrics_listen": listen}})
    assert places(errors) == ["daemon.metrics_listen"]


@pytest.mark.parametrize(
    ("listen", "words"),
    [
        ("999.1.1.1:9464", "999.1.1.1 is not an IPv4 address (four numbers from 0 to 255)"),
        ("10.0.0:9464", "10.0.0 is not an IPv4 address"),
        ("under_score:9464", "'under_score' is neither an IP address nor a host name"),
        ("-box:9464", "neither an IP address nor a host name"),
        ("a..b:9464", "neither an IP address nor a host name"),
    ],
)
def test_metrics_listen_refuses_a_host_no_machine_can_bind(listen: str, words: str) -> None:
    (error,) = errors_of({**base(), "daemon": {"metrics_listen": listen}})
    assert error.startswith(f"daemon.metrics_listen: '{listen}': ")
    assert words in error
    assert "e.g. '127.0.0.1:9464'" in error


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9464", "localhost:9464", "metrics-1.example.com:9464", "box:0"]
)
def test_metrics_listen_takes_ip_addresses_and_host_names(listen: str) -> None:
    assert validated({**base(), "daemon": {"metrics_listen": listen}}, environ=ENV)


def test_a_backoff_that_starts_above_its_maximum_is_refused() -> None:
    errors = errors_of({**base(), "backoff": {"retry_initial": "1h", "suspend_max": "30m"}})
    assert places(errors) == ["backoff.retry_initial", "backoff.suspend_initial"]
    assert "1h is longer than retry_max (10m)" in errors[0]


@pytest.mark.parametrize(
    "key", ["retry_initial", "retry_max", "suspend_initial", "suspend_max", "auth_retry"]
)
def test_a_backoff_of_zero_is_refused_at_its_place(key: str) -> None:
    # The config is the one place these are checked: the policy trusts what it is given.
    errors = errors_of({**base(), "backoff": {key: "0s"}})
    assert places(errors) == [f"backoff.{key}"]


def test_a_short_auth_retry_is_allowed_but_warned_about() -> None:
    config = validated({**base(), "backoff": {"auth_retry": "2s"}}, environ=ENV)
    assert config.backoff.auth_retry == timedelta(seconds=2)
    (warning,) = config_warnings(config)
    assert warning.startswith("backoff.auth_retry: 2s is under 15 minutes")
    assert "10 failed logins within 15 minutes" in warning


def test_no_servers_is_refused() -> None:
    assert places(errors_of({**base(), "servers": []})) == ["servers"]
    assert errors_of({"credentials": base()["credentials"]}) == [
        "servers: no [[servers]] table; add at least one (see config/refreshd.example.toml)"
    ]


def test_servers_written_as_a_single_table_get_the_two_brackets_hint() -> None:
    data = {**base(), "servers": base()["servers"][0]}
    assert "[[servers]], with two brackets" in errors_of(data)[0]


# --- Credentials ----------------------------------------------------------------------------


def test_loading_reads_no_password_until_resolve_passwords_is_asked(tmp_path: Path) -> None:
    data = base()
    data["credentials"]["west"] = {"user": "other", "password_file": "west.password"}
    # Neither the variable nor the file exists: a shell outside the service.
    config = validate_config(data, environ={}, path=tmp_path / "refreshd.toml")

    assert config.secrets() == frozenset()
    with pytest.raises(ValueError, match="password not read"):
        config.credentials_for("east-1")
    with pytest.raises(ConfigError) as caught:
        resolve_passwords(config, environ={}, path=tmp_path / "refreshd.toml")
    assert places(caught.value.errors) == [
        "credentials.east.password_env",
        "credentials.west.password_file",
    ]


def test_resolving_gives_a_copy_with_every_password_and_leaves_the_config_alone() -> None:
    config = validate_config(base(), environ={})

    resolved = resolve_passwords(config, environ=ENV)

    assert resolved.credentials_for("east-1").password.get_secret_value() == PASSWORD
    assert resolved.secrets() == {PASSWORD}
    assert config.secrets() == frozenset()


@pytest.mark.parametrize("name", ["ea st", "east\x1b[2J", "east\r", "", "ost/west", "é"])
def test_a_credentials_table_name_follows_the_server_name_rule(name: str) -> None:
    data = base()
    data["credentials"] = {name: data["credentials"]["east"]}
    data["servers"][0]["credentials"] = name

    errors = errors_of(data)

    (error,) = [e for e in errors if e.startswith("credentials")]
    assert "use only letters" in error or "must not be empty" in error
    assert "[key]" not in error
    assert "\x1b" not in error
    assert "\r" not in error


def test_a_state_path_with_a_nul_character_is_refused_at_its_place() -> None:
    errors = errors_of({**base(), "daemon": {"state_path": "/var/lib/st\x00ate.db"}})

    assert places(errors) == ["daemon.state_path"]
    assert "NUL" in errors[0]


def test_a_missing_password_environment_variable_is_named_by_its_place() -> None:
    errors = errors_of(base(), environ={})
    assert places(errors) == ["credentials.east.password_env"]
    assert "the environment variable it names is not set" in errors[0]
    assert "REFRESHD_EAST_PASSWORD" not in errors[0]  # a password put there would show


def test_an_empty_password_environment_variable_is_refused() -> None:
    errors = errors_of(base(), environ={"REFRESHD_EAST_PASSWORD": ""})
    assert errors == ["credentials.east.password_env: the environment variable it names is empty"]


@pytest.mark.parametrize(
    ("table", "place"),
    [
        ({"user": "refreshd", "password_env": PASSWORD}, "credentials.east.password_env"),
        ({"user": "refreshd", "password_env": "Hunter2-x"}, "credentials.east.password_env"),
        ({"user": "refreshd", "password_file": PASSWORD}, "credentials.east.password_file"),
        ({"user": f"refreshd:{PASSWORD}", "password": PASSWORD}, "credentials.east.user"),
        ({"user": f"ref {PASSWORD}", "password": PASSWORD}, "credentials.east.user"),
    ],
)
def test_a_password_in_the_wrong_key_is_named_by_its_place_never_shown(
    table: dict[str, str], place: str, tmp_path: Path
) -> None:
    data = base()
    data["credentials"]["east"] = table
    errors = errors_of(data, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert places(errors) == [place]
    for secret in (PASSWORD, "Hunter2", "secret_pw"):
        assert secret not in errors[0], errors


def test_a_short_password_is_warned_about_without_showing_it() -> None:
    data = base()
    data["credentials"]["east"] = {"user": "refreshd", "password_env": "REFRESHD_EAST_PASSWORD"}
    config = validated(data, environ={"REFRESHD_EAST_PASSWORD": "Ab-12_x"})
    warnings = [w for w in config_warnings(config) if "fewer than 8 characters" in w]
    assert len(warnings) == 1
    assert warnings[0].startswith("credentials.east: ")
    assert "Ab-12_x" not in warnings[0]


def test_a_curl_style_user_is_explained() -> None:
    data = base()
    data["credentials"]["east"]["user"] = f"refreshd:{PASSWORD}"
    assert "looks like user:password (curl style)" in errors_of(data)[0]


def test_a_relative_password_file_is_read_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "east.pw").write_text(PASSWORD + "\n")
    data = base()
    data["credentials"]["east"] = {"user": "refreshd", "password_file": "east.pw"}

    config = validated(data, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})

    credentials = config.credentials_for("east-1")
    assert credentials.password.get_secret_value() == PASSWORD
    assert credentials.source_kind == "file"


def test_a_relative_password_file_is_read_next_to_the_config_without_credentials_directory(
    tmp_path: Path,
) -> None:
    (tmp_path / "east.pw").write_text(PASSWORD)
    path = write(
        tmp_path,
        """
        [credentials.east]
        user = "refreshd"
        password_file = "east.pw"
        [[servers]]
        name = "east-1"
        api_url = "https://dialer-east.example.com/vicidial/non_agent_api.php"
        credentials = "east"
        windows = ["01:00-02:00"]
        """,
    )
    config = loaded(path, environ={})
    assert config.credentials_for("east-1").password.get_secret_value() == PASSWORD


@pytest.mark.parametrize(
    ("content", "password"),
    [(PASSWORD + "\n", PASSWORD), (PASSWORD + "\r\n", PASSWORD), (PASSWORD, PASSWORD)],
)
def test_a_password_file_loses_one_trailing_newline(
    tmp_path: Path, content: str, password: str
) -> None:
    (tmp_path / "pw").write_bytes(content.encode())
    data = base()
    data["credentials"]["east"] = {"user": "refreshd", "password_file": str(tmp_path / "pw")}
    config = validated(data, environ={})
    assert config.credentials_for("east-1").password.get_secret_value() == password


@pytest.mark.parametrize(
    ("content", "words"),
    [("", "is empty"), ("\n", "is empty"), (PASSWORD + "\n\n", "can never log in")],
)
def test_an_empty_or_padded_password_file_is_refused(
    tmp_path: Path, content: str, words: str
) -> None:
    (tmp_path / "pw").write_text(content)
    data = base()
    data["credentials"]["east"] = {"user": "refreshd", "password_file": str(tmp_path / "pw")}
    errors = errors_of(data, environ={})
    assert places(errors) == ["credentials.east.password_file"]
    assert words in errors[0]


def test_an_unreadable_password_file_is_an_error_at_its_place(tmp_path: Path) -> None:
    data = base()
    data["credentials"]["east"] = {"user": "refreshd", "password_file": "absent.pw"}
    errors = errors_of(data, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert errors == [
        "credentials.east.password_file: cannot read the file it names: No such file or "
        f"directory (a relative password_file is read from $CREDENTIALS_DIRECTORY, {tmp_path})"
    ]


@pytest.mark.parametrize(
    "table",
    [
        {"user": "refreshd"},
        {"user": "refreshd", "password": PASSWORD, "password_env": "REFRESHD_EAST_PASSWORD"},
    ],
)
def test_credentials_need_exactly_one_password_source(table: dict[str, str]) -> None:
    data = base()
    data["credentials"]["east"] = table
    errors = errors_of(data)
    assert places(errors) == ["credentials.east"]
    assert "give exactly one of password_env" in errors[0]


def test_an_inline_password_works_and_is_warned_about() -> None:
    data = base()
    data["credentials"]["east"] = {"user": "refreshd", "password": PASSWORD}
    config = validated(data, environ={})
    assert config.credentials_for("east-1").password.get_secret_value() == PASSWORD
    assert config_warnings(config) == [
        "credentials.east.password: the password is written in the config file; prefer "
        "password_env or password_file (e.g. a systemd credential)"
    ]


# --- No password ever shown -----------------------------------------------------------------


def test_the_password_never_appears_in_a_configs_repr_str_or_dump() -> None:
    data = base()
    data["credentials"]["inline"] = {"user": "other", "password": PASSWORD + "x"}
    config = validated(data, environ=ENV)
    shown = [
        repr(config),
        str(config),
        repr(config.resolved_credentials()),
        str(config.credentials_for("east-1")),
        str(config.model_dump()),
        config.model_dump_json(),
        str(config_warnings(config)),
    ]
    for text in shown:
        assert PASSWORD not in text


@pytest.mark.parametrize(
    "scenario",
    ["inline", "env", "file", "url-userinfo", "url-query", "direct-construction"],
)
def test_the_password_never_appears_in_an_error(tmp_path: Path, scenario: str) -> None:
    data = base()
    environ = {"REFRESHD_EAST_PASSWORD": BAD_PASSWORD}
    if scenario == "inline":
        data["credentials"]["east"] = {"user": "refreshd", "password": BAD_PASSWORD}
    elif scenario == "file":
        (tmp_path / "pw").write_text(BAD_PASSWORD)
        data["credentials"]["east"] = {"user": "refreshd", "password_file": str(tmp_path / "pw")}
    elif scenario == "url-userinfo":
        data["servers"][0]["api_url"] = f"https://refreshd:{BAD_PASSWORD}@dialer.example.com/x"
    elif scenario == "url-query":
        data["servers"][0]["api_url"] = f"https://dialer.example.com/x?pass={BAD_PASSWORD}"

    if scenario == "direct-construction":
        data["credentials"]["east"] = {"user": "refreshd", "password": BAD_PASSWORD}
        with pytest.raises(ValueError, match="can never log in") as caught:  # input hidden
            Config.model_validate(data)
        texts = [str(caught.value), repr(caught.value)]
    else:
        with pytest.raises(ConfigError) as error:
            validated(data, environ=environ)
        texts = [str(error.value), repr(error.value), *error.value.errors]

    for text in texts:
        assert BAD_PASSWORD not in text
        assert "Hunter2" not in text


# --- Environment overrides ------------------------------------------------------------------


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[client]\ntimeout = "30s"\n[daemon]\nstate_path = "/var/x.db"\n')
    path.write_text(path.read_text() + _servers_toml())
    environ = {
        **ENV,
        "REFRESHD_CLIENT__TIMEOUT": "5s",
        "REFRESHD_DAEMON__STATE_PATH": "/tmp/x.db",
        "REFRESHD_DAEMON__MAX_CONCURRENCY": "4",
        "REFRESHD_CLIENT__VERIFY_TLS": "false",
    }

    config = loaded(path, environ=environ)

    assert config.client.timeout == timedelta(seconds=5)
    assert config.daemon.state_path == Path("/tmp/x.db")
    assert config.daemon.max_concurrency == 4
    assert config.client.verify_tls is False


def test_environment_overrides_are_case_insensitive_and_can_set_a_list_as_json() -> None:
    servers = '[{"name": "env-1", "api_url": "https://d.example.com/vicidial/non_agent_api.php",'
    servers += ' "credentials": "east", "windows": ["01:00-02:00"]}]'
    environ = {**ENV, "refreshd_servers": servers}
    config = validated(base(), environ=environ)
    assert [server.name for server in config.servers] == ["env-1"]


def test_an_invalid_override_names_its_environment_variable() -> None:
    errors = errors_of(base(), environ={**ENV, "REFRESHD_CLIENT__TIMEOUT": "soon"})
    assert places(errors) == ["client.timeout"]
    assert errors[0].endswith("(set by environment variable REFRESHD_CLIENT__TIMEOUT)")


def test_an_override_of_an_unknown_table_is_refused() -> None:
    errors = errors_of(base(), environ={**ENV, "REFRESHD_DEAMON__STATE_PATH": "/x"})
    assert errors == [
        "REFRESHD_DEAMON__STATE_PATH: unknown table 'deamon' in an environment override; "
        "did you mean REFRESHD_DAEMON__...?"
    ]


def test_an_override_of_an_unknown_key_is_refused() -> None:
    errors = errors_of(base(), environ={**ENV, "REFRESHD_CLIENT__TIMEOUTS": "5s"})
    assert errors == [
        "client.timeouts: unknown key; did you mean 'timeout'? "
        "(set by environment variable REFRESHD_CLIENT__TIMEOUTS)"
    ]


def test_an_override_that_is_not_json_where_json_is_needed_is_refused() -> None:
    errors = errors_of(base(), environ={**ENV, "REFRESHD_SERVERS": "[{"})
    assert places(errors) == ["REFRESHD_SERVERS"]
    assert "not valid JSON" in errors[0]


def test_a_list_cannot_be_overridden_item_by_item() -> None:
    errors = errors_of(base(), environ={**ENV, "REFRESHD_SERVERS__0__NAME": "x"})
    assert errors == [
        "REFRESHD_SERVERS__0__NAME: a list cannot be set item by item from the environment; "
        "set REFRESHD_SERVERS to the whole list as JSON"
    ]


def test_a_credentials_table_can_be_set_as_json_and_refined_key_by_key() -> None:
    environ = {
        **ENV,
        "REFRESHD_CREDENTIALS__WEST": '{"user": "from-json", "password_env": "WEST_PASSWORD"}',
        "REFRESHD_CREDENTIALS__WEST__USER": "from-key",
        "WEST_PASSWORD": "west-password-1",
    }
    config = validated(base(), environ=environ)
    west = config.resolved_credentials()["west"]
    assert (west.user, west.password.get_secret_value()) == ("from-key", "west-password-1")


def test_an_override_reaches_a_table_whose_name_has_capitals() -> None:
    data = base()
    data["credentials"] = {"East": data["credentials"]["east"]}
    data["servers"][0]["credentials"] = "East"
    environ = {**ENV, "REFRESHD_CREDENTIALS__EAST__USER": "from-env"}

    config = validated(data, environ=environ)

    assert list(config.credentials) == ["East"]  # no second, lower-case table
    assert config.credentials["East"].user == "from-env"


def test_a_json_error_is_reported_beside_every_other_problem() -> None:
    environ = {**ENV, "REFRESHD_SERVERS": "[{", "REFRESHD_CLIENT__TIMEOUT": "soon"}
    assert sorted(places(errors_of(base(), environ=environ))) == [
        "REFRESHD_SERVERS",
        "client.timeout",
    ]


def test_unrelated_refreshd_variables_are_ignored() -> None:
    # REFRESHD_CONFIG names the file; REFRESHD_WEST__PASSWORD looks like an override of a
    # table 'west' but is a password_env variable. Neither is refused, neither sets a key.
    environ = {**ENV, "REFRESHD_CONFIG": "/etc/x.toml", "REFRESHD_WEST__PASSWORD": "x"}
    data = base()
    data["credentials"]["west"] = {"user": "w", "password_env": "REFRESHD_WEST__PASSWORD"}
    config = validated(data, environ=environ)
    file_alone = validated(base(), environ=ENV)
    assert config.model_dump(exclude={"credentials"}) == file_alone.model_dump(
        exclude={"credentials"}
    )
    assert config.resolved_credentials()["west"].password.get_secret_value() == "x"


def test_loading_does_not_read_os_environ_when_given_an_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REFRESHD_CLIENT__TIMEOUT", "1s")
    monkeypatch.setenv("REFRESHD_EAST_PASSWORD", "from-os-environ")
    config = validated(base(), environ=ENV)
    assert config.client.timeout == timedelta(seconds=10)
    assert config.credentials_for("east-1").password.get_secret_value() == PASSWORD


# --- The file itself ----------------------------------------------------------------------------


def _servers_toml() -> str:
    return """
[credentials.east]
user = "refreshd"
password_env = "REFRESHD_EAST_PASSWORD"

[[servers]]
name = "east-1"
api_url = "https://dialer-east.example.com/vicidial/non_agent_api.php"
credentials = "east"
windows = ["mon-fri 02:00-04:00"]
"""


def test_a_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = _servers_toml() + '\n[client]\ntimeout = "10s\n'
    line = text.splitlines().index('timeout = "10s') + 1
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        loaded(path, environ=ENV)
    (error,) = caught.value.errors
    assert error.startswith("TOML syntax error: ")
    assert f"line {line}," in error
    assert caught.value.path == path
    assert str(path) in str(caught.value)


def test_a_missing_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        loaded(tmp_path / "absent.toml", environ=ENV)
    (error,) = caught.value.errors
    assert error.startswith("no such file; create it")
    assert "-c/--config" in error


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        loaded(tmp_path, environ=ENV)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])
def test_an_empty_file_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"no settings; at least one \[\[servers\]\]"):
        loaded(write(tmp_path, text), environ=ENV)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        loaded(path, environ=ENV)


def test_an_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, _servers_toml())

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)  # root would read a chmod 0 file anyway
    with pytest.raises(ConfigError, match="permission denied; make the file readable"):
        loaded(path, environ=ENV)


def test_a_config_error_lists_every_error_under_the_files_name(tmp_path: Path) -> None:
    path = write(tmp_path, _servers_toml() + '[client]\nsource = "x"\ntimeout = "no"\n')
    with pytest.raises(ConfigError) as caught:
        loaded(path, environ=ENV)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 2 config errors:"
    assert [line.split(":")[0] for line in lines[1:]] == ["  client.timeout", "  client.source"]


# --- Warnings -------------------------------------------------------------------------------


def test_warnings_flag_clear_text_and_unchecked_tls_and_short_repeats() -> None:
    data = with_server(base(), name="east-2", api_url="http://d.example.com/x.php", every="1m")
    data["client"] = {"verify_tls": False}

    warnings = config_warnings(validated(data, environ=ENV))

    assert places(warnings) == [
        "client.verify_tls",
        "servers[1].api_url",
        "servers[1].api_url",
        "servers[1].every",
    ]
    assert "clear text" in warnings[1]


# --- Never anything but ConfigError ----------------------------------------------------------

_KEYS = sorted(
    {"name", "windows", "servers", "user", "password", "password_env", "password_file"}
    | set(DaemonConfig.model_fields)
    | set(ClientConfig.model_fields)
    | set(BackoffConfig.model_fields)
    | set(ServerConfig.model_fields)
)
_SCALARS = (
    st.text(max_size=12)
    | st.sampled_from(["1h", "UTC", "east", "mon-fri 02:00-04:00", "https://h/x", "10.0.0.1"])
    | st.integers()
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.datetimes()
    | st.dates()
    | st.times()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_DOCUMENTS = st.dictionaries(
    st.sampled_from(["daemon", "client", "backoff", "credentials", "servers", "blackouts"]),
    _VALUES,
)


def _toml_string(text: str) -> str:
    escaped = "".join(
        f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F or char in '"\\' else char
        for char in text
    )
    return f'"{escaped}"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    pairs = (f"{_toml_string(key)} = {_toml_value(item)}" for key, item in value.items())
    return "{" + ", ".join(pairs) + "}"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(document=_DOCUMENTS)
def test_loading_any_toml_document_gives_a_config_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, document: dict[str, Any]
) -> None:
    text = "".join(f"{key} = {_toml_value(value)}\n" for key, value in document.items())
    assert tomllib.loads(text) == document  # the test's TOML writer is faithful
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    errors: list[str] = []
    try:
        loaded(path, environ={"REFRESHD_EAST_PASSWORD": PASSWORD})
    except ConfigError as error:
        errors = error.errors or ["(none)"]
    assert all(isinstance(line, str) and line for line in errors)


_ENV_NAMES = st.lists(
    st.sampled_from(["daemon", "client", "servers", "credentials", "east", "timeout", "0", ""]),
    min_size=1,
    max_size=3,
).map(lambda parts: "REFRESHD_" + "__".join(parts).upper())
_ENV_VALUES = st.text(max_size=10) | st.sampled_from(
    ["{}", "[]", "null", "1", '{"timeout": "5s"}', '[{"name": "x"}]', '{"east": {"user": "u"}}']
)


@settings(max_examples=200)
@given(overrides=st.dictionaries(_ENV_NAMES, _ENV_VALUES, max_size=4))
def test_any_refreshd_environment_gives_a_config_or_a_config_error(
    overrides: dict[str, str],
) -> None:
    errors: list[str] = []
    try:
        validated(base(), environ={**overrides, **ENV})
    except ConfigError as error:
        errors = error.errors or ["(none)"]
    assert all(isinstance(line, str) and line for line in errors)


# --- Durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90", timedelta(seconds=90)),
        (90, timedelta(seconds=90)),
        (2.5, timedelta(seconds=2.5)),
        ("0", timedelta(0)),
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("1.5h", timedelta(minutes=90)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (" 1h 30m ", timedelta(minutes=90)),
        ("0.1s", timedelta(milliseconds=100)),
    ],
)
def test_parse_duration_accepts_seconds_and_units(
    value: str | int | float, expected: timedelta
) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    ["10x", "", "h", "1h1h", "1.h", "ten", "1e3", "P1D", True, float("inf"), "9" * 30 + "d"],
)
def test_parse_duration_refuses_what_is_not_a_duration(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^'|^True|^inf"):
        parse_duration(value)


def test_parse_duration_says_how_to_write_one() -> None:
    with pytest.raises(ValueError, match=r"^'10x': ") as caught:
        parse_duration("10x")
    assert str(caught.value).endswith(
        "use a number of seconds or a number with s, m, h or d, e.g. '30s', '10m', '1h'"
    )


@pytest.mark.parametrize("value", [-1, -0.5, "-5s", "-1"])
def test_parse_duration_refuses_negative_values(value: str | int | float) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(days=1, hours=2), "1d2h"),
        (timedelta(milliseconds=500), "0.5s"),
        (timedelta(minutes=1, microseconds=250_000), "1m0.25s"),
        (timedelta(seconds=-30), "-30s"),
    ],
)
def test_format_duration_gives_the_shortest_compound_form(duration: timedelta, text: str) -> None:
    assert format_duration(duration) == text


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=100_000)))
def test_format_duration_parses_back_to_the_same_duration(duration: timedelta) -> None:
    assert parse_duration(format_duration(duration)) == duration


def test_http_to_a_loopback_address_is_not_warned_about() -> None:
    data = with_server(
        base(), name="local", api_url="http://127.0.0.1:8080/vicidial/non_agent_api.php"
    )
    config = validated(data, environ=ENV)
    assert not [w for w in config_warnings(config) if "clear text" in w]


def test_two_tables_naming_one_vicidial_user_are_warned_about() -> None:
    data = base()
    data["credentials"]["west"] = {"user": "REFRESHD", "password_env": "REFRESHD_EAST_PASSWORD"}
    data["credentials"]["north"] = {"user": "other", "password_env": "REFRESHD_EAST_PASSWORD"}
    data["servers"] += [
        {**data["servers"][0], "name": f"{name}-1", "credentials": name}
        for name in ("west", "north")
    ]

    warnings = config_warnings(validated(data, environ=ENV))

    (shared,) = [w for w in warnings if "share" in w]
    assert shared.startswith("credentials east, west: all log in as VICIdial user 'refreshd'")
    assert "one failed-login budget" in shared

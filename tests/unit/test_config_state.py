"""`[state]`: a shared store's URL (never with a password), its optional password source, the
lease's bounds, the instance's name; without it, SQLite at daemon.state_path."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from refreshd.config import ConfigError, resolve_passwords, validate_config

STATE_PASSWORD = "state pw: any & every character!"
ENV = {"API_PW": "apiPass_123", "STATE_PW": STATE_PASSWORD}


def data(state: dict[str, Any] | None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "credentials": {"main": {"user": "refreshd", "password_env": "API_PW"}},
        "servers": [
            {
                "name": "east-1",
                "api_url": "https://dialer.example.com/vicidial/non_agent_api.php",
                "credentials": "main",
                "windows": ["mon-fri 02:00-04:00"],
            }
        ],
    }
    if state is not None:
        raw["state"] = state
    return raw


def errors_of(state: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        resolve_passwords(validate_config(data(state), environ=ENV), environ=ENV)
    return caught.value.errors


def test_without_state_the_store_is_the_sqlite_file() -> None:
    config = validate_config(data(None), environ={})
    assert config.state is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://refreshd@db.example.com:5432/refreshd", None),
        (
            "postgres://refreshd@db.example.com/refreshd",
            "postgresql://refreshd@db.example.com:5432/refreshd",
        ),
        (
            "mysql://refreshd@vicidb.example.com/refreshd",
            "mysql://refreshd@vicidb.example.com:3306/refreshd",
        ),
        (
            "mariadb://refreshd@vicidb.example.com:3307/refreshd",
            "mysql://refreshd@vicidb.example.com:3307/refreshd",
        ),
    ],
)
def test_a_state_url_is_kept_in_its_full_form(url: str, shown: str | None) -> None:
    config = validate_config(data({"url": url}), environ={})
    assert config.state is not None
    assert config.state.url == (shown or url)
    assert config.state.lease == timedelta(seconds=15)


def test_a_password_in_the_url_is_refused_and_never_repeated() -> None:
    (error,) = errors_of({"url": "postgresql://refreshd:hunter2secret@db/refreshd"})
    assert error.startswith("state.url: a password in the URL would be shown")
    assert "password_env or password_file" in error
    assert "hunter2secret" not in error


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://db.example.com/refreshd", "the scheme must be postgresql:// or mysql://"),
        ("sqlite:///var/lib/refreshd/state.db", "the scheme must be postgresql:// or mysql://"),
        ("postgresql://db.example.com/refreshd", "give a user, a host and a database name"),
        ("mysql://refreshd@db.example.com:3306/", "give a user, a host and a database name"),
        ("mysql://refreshd@db.example.com:99999/x", "not a database URL"),
        ("mysql://refreshd@db/x?ssl=1", "no ?options or #fragment are understood"),
    ],
)
def test_a_bad_state_url_says_what_to_write(url: str, says: str) -> None:
    (error,) = errors_of({"url": url})
    assert error.startswith(f"state.url: {says}")


@pytest.mark.parametrize(
    ("lease", "says"),
    [("4s", "must be at least 5s"), ("6m", "must be at most 5m"), ("0s", "must be at least 5s")],
)
def test_the_lease_is_between_5s_and_5m(lease: str, says: str) -> None:
    assert errors_of({"url": "mysql://r@db/refreshd", "lease": lease}) == [f"state.lease: {says}"]


@pytest.mark.parametrize("lease", ["5s", "5m", "30s"])
def test_a_lease_within_bounds_is_taken(lease: str) -> None:
    config = validate_config(data({"url": "mysql://r@db/refreshd", "lease": lease}), environ={})
    assert config.state is not None
    assert timedelta(seconds=5) <= config.state.lease <= timedelta(minutes=5)


def test_the_password_comes_from_the_environment_or_a_file_and_is_redacted(
    tmp_path: Path,
) -> None:
    url = "postgresql://refreshd@db/refreshd"
    by_env = resolve_passwords(
        validate_config(data({"url": url, "password_env": "STATE_PW"}), environ=ENV), environ=ENV
    )
    secret = tmp_path / "state.pw"
    secret.write_text(STATE_PASSWORD + "\n")
    by_file = resolve_passwords(
        validate_config(data({"url": url, "password_file": str(secret)}), environ=ENV),
        environ=ENV,
    )
    for config in (by_env, by_file):
        assert config.state is not None
        assert config.state.secret == STATE_PASSWORD
        assert STATE_PASSWORD in config.secrets()  # the log redactor masks it
        assert STATE_PASSWORD not in repr(config.state)
    without = resolve_passwords(validate_config(data({"url": url}), environ=ENV), environ=ENV)
    assert without.state is not None
    assert without.state.secret is None


def test_password_sources_are_one_at_most_and_never_inline() -> None:
    url = "mysql://r@db/refreshd"
    assert errors_of({"url": url, "password_env": "STATE_PW", "password_file": "/x"}) == [
        "state: give at most one of password_env and password_file"
    ]
    (inline,) = errors_of({"url": url, "password": "inline-secret"})
    assert inline.startswith("state.password: is not read here")
    assert "inline-secret" not in inline
    (missing,) = errors_of({"url": url, "password_env": "NOT_SET_ANYWHERE"})
    assert missing.startswith("state.password_env: the environment variable it names is not set")


def test_the_instance_defaults_to_host_and_pid() -> None:
    import os
    import socket

    default = validate_config(data({"url": "mysql://r@db/refreshd"}), environ={})
    named = validate_config(data({"url": "mysql://r@db/refreshd", "instance": "web-1"}), environ={})
    assert default.state is not None
    assert named.state is not None
    assert default.state.instance_name == f"{socket.gethostname()}:{os.getpid()}"
    assert named.state.instance_name == "web-1"
    assert errors_of({"url": "mysql://r@db/refreshd", "instance": " "}) == [
        "state.instance: must be a name of printable characters, e.g. web-1"
    ]


def test_the_environment_can_set_state() -> None:
    environ = {"REFRESHD_STATE__URL": "postgresql://r@db/refreshd", "REFRESHD_STATE__LEASE": "1m"}
    config = validate_config(data(None), environ=environ)
    assert config.state is not None
    assert (config.state.url, config.state.lease) == (
        "postgresql://r@db:5432/refreshd",
        timedelta(minutes=1),
    )

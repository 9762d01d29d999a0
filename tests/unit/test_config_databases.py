"""`[databases.NAME]` tables and the servers' `database` / `verify_timeout` keys: the URL's
rules, one password source, read only when asked, references checked, passwords redacted."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from refreshd.config import ConfigError, resolve_passwords, validate_config
from refreshd.core.verification import VERIFY_TIMEOUT_DEFAULT

DB_PASSWORD = "db pass: with spaces & symbols!"  # a database takes any character
ENV = {"API_PW": "apiPass_123", "EAST_DB_PW": DB_PASSWORD}


def data(table: dict[str, Any] | None = None, **server: Any) -> dict[str, Any]:
    table = table or {"url": "mysql://ro@vicidb:3306/asterisk", "password_env": "EAST_DB_PW"}
    return {
        "credentials": {"main": {"user": "refreshd", "password_env": "API_PW"}},
        "databases": {"east": table},
        "servers": [
            {
                "name": "east-1",
                "api_url": "https://dialer.example.com/vicidial/non_agent_api.php",
                "credentials": "main",
                "windows": ["mon-fri 02:00-04:00"],
                **server,
            }
        ],
    }


def errors_of(raw: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        resolve_passwords(validate_config(raw, environ=ENV), environ=environ or ENV)
    return caught.value.errors


def test_a_server_names_its_database_and_the_timeout_defaults_to_three_minutes() -> None:
    config = validate_config(data(database="east"), environ=ENV)
    server = config.servers[0]
    assert server.database == "east"
    assert server.verify_timeout == VERIFY_TIMEOUT_DEFAULT == timedelta(minutes=3)
    assert config.databases["east"].parsed.database == "asterisk"


def test_the_database_password_is_read_only_when_asked_and_joins_the_secrets() -> None:
    config = validate_config(data(database="east"), environ={})  # no variable set: fine
    assert not config.databases["east"].password_read
    resolved = resolve_passwords(config, environ=ENV)
    assert resolved.databases["east"].secret == DB_PASSWORD
    assert DB_PASSWORD in resolved.secrets()


def test_an_unset_database_password_variable_is_named_by_its_place() -> None:
    errors = errors_of(data(database="east"), environ={"API_PW": "apiPass_123"})
    assert len(errors) == 1
    assert errors[0].startswith("databases.east.password_env: ")
    assert "EAST_DB_PW" not in errors[0]


@pytest.mark.parametrize(
    ("table", "place", "words"),
    [
        ({"url": "mysql://ro:pw@vicidb/asterisk", "password": "x"}, "url", "password in the URL"),
        ({"url": "postgresql://ro@h/db", "password": "x"}, "url", "mysql://"),
        ({"url": "mysql://ro@vicidb/asterisk"}, "databases.east", "exactly one of"),
        (
            {"url": "mysql://ro@h/a", "password": "x", "password_env": "Y"},
            "databases.east",
            "found password and password_env",
        ),
    ],
)
def test_a_bad_database_table_is_a_config_error_saying_what_to_write(
    table: dict[str, Any], place: str, words: str
) -> None:
    errors = errors_of(data(table))
    assert any(place in error and words in error for error in errors), errors
    assert not any(":pw@" in error for error in errors)


def test_an_unknown_database_is_named_with_the_ones_that_exist() -> None:
    errors = errors_of(data(database="west"))
    assert errors == [
        "servers[0].database: unknown database 'west': add a [databases.west] table or use "
        "one that exists (east)"
    ]


@pytest.mark.parametrize(("value", "words"), [("5s", "at least 10s"), ("2h", "at most 1h")])
def test_verify_timeout_is_between_ten_seconds_and_an_hour(value: str, words: str) -> None:
    errors = errors_of(data(database="east", verify_timeout=value))
    assert errors == [f"servers[0].verify_timeout: must be {words}"]


def test_a_database_password_file_is_read_like_a_credentials_one(tmp_path: Path) -> None:
    (tmp_path / "east-db.password").write_text(DB_PASSWORD + "\n")
    table = {"url": "mysql://ro@vicidb/asterisk", "password_file": "east-db.password"}
    path = tmp_path / "refreshd.toml"
    config = resolve_passwords(
        validate_config(data(table, database="east"), environ=ENV, path=path),
        environ=ENV,
        path=path,
    )
    assert config.databases["east"].secret == DB_PASSWORD

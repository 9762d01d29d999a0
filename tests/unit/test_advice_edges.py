"""Config advice at the edges: the metrics endpoint listening beyond loopback (issue 12,
item 7), warnings grouped so that a fleet logs each distinct one once (item 12), and
warnings about secrets that know whether the file or the environment holds them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from refreshd.config import config_warnings, grouped_warnings, validate_config
from refreshd.config.advice import ignored_proxies_note

ENV = {"REFRESHD_EAST_PASSWORD": "Hunter2-secret_pw"}


def config_with(metrics_listen: str, servers: int = 1, **server: Any) -> dict[str, Any]:
    return {
        "daemon": {"metrics_listen": metrics_listen},
        "credentials": {"east": {"user": "refreshd", "password_env": "REFRESHD_EAST_PASSWORD"}},
        "servers": [
            {
                "name": f"east-{index}",
                "api_url": "https://dialer-east.example.com/vicidial/non_agent_api.php",
                "credentials": "east",
                "windows": ["mon-fri 02:00-04:00"],
                **server,
            }
            for index in range(servers)
        ],
    }


def warnings_for(metrics_listen: str) -> list[str]:
    return config_warnings(validate_config(config_with(metrics_listen), environ=ENV))


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9464", "[::]:9464", "192.0.2.10:9464", "[2001:db8::1]:9464", "box:9464"]
)
def test_metrics_listening_beyond_loopback_is_warned_about(listen: str) -> None:
    (warning,) = warnings_for(listen)
    assert warning.startswith(f"daemon.metrics_listen: {listen} serves /metrics and /healthz")
    assert "firewall" in warning


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:9464", "127.0.0.2:9464", "[::1]:9464", "localhost:9464", ""]
)
def test_metrics_on_loopback_or_off_is_not_warned_about(listen: str) -> None:
    assert warnings_for(listen) == []


def test_a_warning_many_servers_share_is_one_line_naming_five_places_and_counting_the_rest() -> (
    None
):
    data = config_with(
        "", servers=7, api_url="http://dialer.example.com/vicidial/non_agent_api.php"
    )
    warnings = config_warnings(validate_config(data, environ=ENV))
    assert len(warnings) == 7  # one per server, as `check` lists them

    ((warning, places),) = grouped_warnings(warnings)

    assert places == 7
    assert warning == (
        "servers[0].api_url, servers[1].api_url, servers[2].api_url, servers[3].api_url, "
        "servers[4].api_url and 2 more: http:// sends the password in clear text; use https://"
    )


def test_distinct_warnings_stay_apart_in_their_order() -> None:
    warnings = [
        "servers[0].every: 1s is under 5 minutes",
        "daemon.metrics_listen: exposed",
        "servers[1].every: 2s is under 5 minutes",
        "servers[2].every: 1s is under 5 minutes",
        "a warning without a place",
    ]

    assert grouped_warnings(warnings) == [
        ("servers[0].every, servers[2].every: 1s is under 5 minutes", 2),
        ("daemon.metrics_listen: exposed", 1),
        ("servers[1].every: 2s is under 5 minutes", 1),
        ("config: a warning without a place", 1),
    ]


# -- where a secret was set ----------------------------------------------------------------------

PROXY = "http://puser:Pr0xy-pass_1@proxy.example.com:3128"
IN_FILE = {
    "client.proxy: holds the proxy's password",
    "credentials.east.password: the password is written in the config file",
}


def secret_warnings(data: dict[str, Any], environ: dict[str, str]) -> set[str]:
    warnings = config_warnings(validate_config(data, environ=environ))
    return {text for text in IN_FILE for warning in warnings if warning.startswith(text)}


def inline_secrets() -> dict[str, Any]:
    data = config_with("")
    data["credentials"]["east"] = {"user": "refreshd", "password": "Hunter2-secret_pw"}
    data["client"] = {"proxy": PROXY}
    return data


def test_secrets_written_in_the_file_are_warned_about() -> None:
    assert secret_warnings(inline_secrets(), {}) == IN_FILE


@pytest.mark.parametrize(
    "environ",
    [
        {
            "REFRESHD_CLIENT__PROXY": PROXY,
            "REFRESHD_CREDENTIALS__EAST__PASSWORD": "Hunter2-secret_pw",
        },
        {  # whole tables as JSON
            "REFRESHD_CLIENT": json.dumps({"proxy": PROXY}),
            "REFRESHD_CREDENTIALS__EAST": json.dumps({"password": "Hunter2-secret_pw"}),
        },
    ],
)
def test_secrets_set_in_the_environment_are_not_blamed_on_the_file(
    environ: dict[str, str],
) -> None:
    data = config_with("")
    data["credentials"]["east"] = {"user": "refreshd"}
    assert secret_warnings(data, environ) == set()


def test_the_environment_overriding_a_secret_in_the_file_clears_its_warning() -> None:
    environ = {"REFRESHD_CLIENT__PROXY": PROXY}
    assert secret_warnings(inline_secrets(), environ) == IN_FILE - {
        "client.proxy: holds the proxy's password"
    }


# -- proxy variables ignored, named as set ---------------------------------------------------------


def test_ignored_proxy_variables_are_named_as_they_are_set() -> None:
    environ = {"https_proxy": "http://a:1", "HTTP_PROXY": "http://b:1", "all_proxy": "", "X": "y"}
    note = ignored_proxies_note(environ)
    assert note.startswith(" (https_proxy, HTTP_PROXY in the environment: ignored;")


def test_no_proxy_variable_no_note() -> None:
    assert ignored_proxies_note({"NO_PROXY": "*", "https_proxy": ""}) == ""


def test_a_password_set_for_a_table_named_in_another_case_is_not_blamed_on_the_file() -> None:
    data = config_with("")
    data["credentials"] = {"East": {"user": "refreshd"}}
    for server in data["servers"]:
        server["credentials"] = "East"
    environ = {"REFRESHD_CREDENTIALS__EAST__PASSWORD": "Hunter2-secret_pw"}
    assert secret_warnings(data, environ) == set()

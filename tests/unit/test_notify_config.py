"""[[notify]] tables and ping_url / ping_url_env: their rules, the URL read only when the
daemon asks, kept a secret (never in an error, always among the secrets masked), and the
bodies they are sent: "json" and "slack", masked as the log is."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from refreshd.binding import server_fingerprint
from refreshd.config import ConfigError, resolve_passwords, validate_config
from refreshd.config.notify import DEFAULT_EVENTS
from refreshd.notify.formats import body, slack_text
from refreshd.notify.hooks import ping_url

TOKEN = "T0KEN-s3cr3t-42"
HOOK = f"https://hooks.example.com/services/{TOKEN}"
PING = f"https://hc-ping.com/{TOKEN}"


def _document(notify: list[dict[str, Any]] | None = None, **server: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "credentials": {"main": {"user": "refreshd", "password": "demo-pass-123"}},
        "servers": [
            {
                "name": "east",
                "api_url": "https://dialer.example.com/vicidial/non_agent_api.php",
                "credentials": "main",
                "windows": ["02:00-04:00"],
                **server,
            }
        ],
    }
    if notify is not None:
        document["notify"] = notify
    return document


def _error(document: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    def load() -> None:
        config = validate_config(document, environ={})
        resolve_passwords(config, environ=environ or {}, urls=True)

    with pytest.raises(ConfigError) as caught:
        load()
    return str(caught.value)


def test_the_default_events_are_the_issues_six() -> None:
    config = validate_config(_document([{"name": "ops", "url_env": "HOOK"}]), environ={})
    assert config.notify[0].events == DEFAULT_EVENTS
    assert config.notify[0].format == "json"


def test_an_unknown_event_is_refused_with_the_list_of_valid_ones() -> None:
    message = _error(_document([{"name": "ops", "url": HOOK, "events": ["server.suspend"]}]))
    assert "notify[0].events: unknown event 'server.suspend'" in message
    assert "server.suspended" in message
    assert "refresh.not_applied" in message


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"name": "ops"}, "give exactly one of url_env"),
        ({"name": "ops", "url": HOOK, "url_env": "HOOK"}, "found url and url_env"),
        ({"name": "ops", "url": f"ftp://{TOKEN}@x/"}, "must start with https://"),
        ({"name": "ops", "url": f"hooks.example.com/{TOKEN}"}, "must start with https://"),
        ({"name": "ops", "url_env": HOOK}, "not an environment variable name"),
        ({"name": "ops", "url": HOOK, "format": "xml"}, "'json' or 'slack'"),
        ({"name": "ops", "url": HOOK, "events": []}, "must not be empty"),
    ],
)
def test_a_wrong_table_is_refused_without_echoing_its_url(
    table: dict[str, Any], expected: str
) -> None:
    message = _error(_document([table]))
    assert expected in message
    assert TOKEN not in message


def test_two_tables_with_one_name_are_refused() -> None:
    message = _error(_document([{"name": "ops", "url": HOOK}, {"name": "ops", "url": HOOK}]))
    assert "duplicate [[notify]] name 'ops'" in message


def test_url_env_is_read_only_when_the_daemon_asks(tmp_path: Path) -> None:
    document = _document([{"name": "ops", "url_env": "HOOK"}], ping_url_env="PING")
    config = validate_config(document, environ={})
    assert resolve_passwords(config, environ={}).notify[0].secret is None  # `refresh`, `check`
    missing = _error(document)
    assert "notify[0].url_env: the environment variable it names is not set" in missing
    assert "servers[0].ping_url_env: the environment variable it names is not set" in missing
    bad = _error(document, {"HOOK": TOKEN, "PING": PING})
    assert "notify[0].url_env: the environment variable it names must start with" in bad
    assert TOKEN not in bad
    read = resolve_passwords(config, environ={"HOOK": HOOK, "PING": PING}, urls=True)
    assert read.notify[0].secret == HOOK
    assert read.servers[0].ping_secret == PING
    assert {HOOK, PING} <= read.secrets()


def test_url_file_is_read_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "ops.webhook").write_text(HOOK + "\n")
    config = validate_config(_document([{"name": "ops", "url_file": "ops.webhook"}]), environ={})
    read = resolve_passwords(config, environ={}, path=tmp_path / "refreshd.toml", urls=True)
    assert read.notify[0].secret == HOOK


def test_inline_urls_are_secrets_from_the_start_and_never_shown() -> None:
    config = validate_config(_document([{"name": "ops", "url": HOOK}], ping_url=PING), environ={})
    assert {HOOK, PING} <= config.secrets()
    assert TOKEN not in repr(config)
    assert TOKEN not in str(config.model_dump())


def test_ping_url_and_ping_url_env_together_are_refused() -> None:
    message = _error(_document(ping_url=PING, ping_url_env="PING"))
    assert "servers[0]: give at most one of ping_url and ping_url_env" in message
    assert TOKEN not in _error(_document(ping_url=f"hc-ping.com/{TOKEN}"))


def test_a_new_ping_url_is_no_change_of_how_the_server_is_refreshed() -> None:
    def fingerprint(**server: Any) -> str:
        config = validate_config(_document(**server), environ={})
        return server_fingerprint(config, config.servers[0], "fp")

    assert fingerprint() == fingerprint(ping_url=PING) == fingerprint(ping_url_env="PING")
    assert fingerprint() != fingerprint(windows=["03:00-04:00"])


# --- bodies ---------------------------------------------------------------------------

SUSPENDED = {
    "server": "east",
    "outcome": "permission_denied",
    "suspended_until": datetime(2027, 1, 4, 3, 0, tzinfo=UTC),
    "suspensions": 1,
    "reason": "permission_denied: server suspended for 1h",
}
NOW = datetime(2027, 1, 4, 2, 0, tzinfo=UTC)


def test_the_json_body_is_the_event_as_logged() -> None:
    sent = json.loads(body("json", "server.suspended", "warning", SUSPENDED, NOW, ()))
    assert sent == {
        "timestamp": "2027-01-04T02:00:00Z",
        "level": "warning",
        "event": "server.suspended",
        "server": "east",
        "outcome": "permission_denied",
        "suspended_until": "2027-01-04T03:00:00Z",
        "suspensions": 1,
        "reason": "permission_denied: server suspended for 1h",
    }


def test_the_slack_body_is_one_line_with_the_server_what_happened_and_what_to_do() -> None:
    sent = json.loads(body("slack", "server.suspended", "warning", SUSPENDED, NOW, ()))
    assert list(sent) == ["text"]
    text = sent["text"]
    assert "\n" not in text
    assert text.startswith("*east*: refreshes suspended until 2027-01-04T03:00:00Z")
    assert "What to do: give the VICIdial user API access" in text


@pytest.mark.parametrize(
    ("event", "fields", "expected"),
    [
        (
            "slot.missed",
            {"server": "east", "slot": "S", "slot_end": "E", "outcome": "transient", "attempts": 4},
            "ended without a successful refresh (4 attempts, last outcome transient)",
        ),
        (
            "credentials.suspended",
            {
                "server": "east",
                "credentials": "main",
                "outcome": "auth_failed",
                "suspended_until": "T",
            },
            "What to do: check the user and password",
        ),
        ("server.resumed", {"server": "east", "reason": "refresh succeeded"}, "Nothing to do"),
        (
            "refresh.not_applied",
            {"server": "east", "seconds": 180, "flagged": [{"server_ip": "10.0.0.5"}]},
            "1 telephony servers still flagged",
        ),
        (
            "server.suspended",
            {"server": "east", "outcome": "bad_request", "config_error": "check [client].source"},
            "What to do: check [client].source.",
        ),
    ],
)
def test_slack_lines_say_what_to_do(event: str, fields: dict[str, Any], expected: str) -> None:
    assert expected in slack_text(event, fields)


@pytest.mark.parametrize("fmt", ["json", "slack"])
def test_no_secret_leaves_in_a_body(fmt: str) -> None:
    fields = {**SUSPENDED, "reason": f"answer echoed {TOKEN} and pass=demo-pass-123"}
    sent = body(fmt, "server.suspended", "warning", fields, NOW, (TOKEN,)).decode()
    assert TOKEN not in sent
    assert "demo-pass-123" not in sent


@pytest.mark.parametrize(
    ("base", "suffix", "expected"),
    [
        ("https://hc-ping.com/uuid", "start", "https://hc-ping.com/uuid/start"),
        ("https://hc-ping.com/uuid/", "fail", "https://hc-ping.com/uuid/fail"),
        ("https://hc-ping.com/uuid", "", "https://hc-ping.com/uuid"),
        ("https://kuma/api/push/k?status=up", "fail", "https://kuma/api/push/k/fail?status=up"),
    ],
)
def test_ping_urls(base: str, suffix: str, expected: str) -> None:
    assert ping_url(base, suffix) == expected


def test_text_from_outside_cannot_mention_or_link_in_a_slack_message() -> None:
    # A hostile or broken web server's answer is the detail of refresh.failed: Slack reads
    # <!channel> as a mention of everyone and <url|text> as a disguised link; its docs ask
    # senders to escape &, < and > in text.
    fields = {
        "server": "east",
        "outcome": "unexpected",
        "detail": "<!channel> log in at <https://evil.example|your VICIdial> & <@U123>",
    }
    text = json.loads(body("slack", "refresh.failed", "error", fields, NOW, ()))["text"]
    assert "<" not in text
    assert ">" not in text
    assert "&lt;!channel&gt; log in at &lt;https://evil.example|your VICIdial&gt; &amp;" in text


def test_a_missing_url_file_is_explained_in_terms_of_url_file(tmp_path: Path) -> None:
    document = _document([{"name": "ops", "url_file": "ops.webhook"}])
    config = validate_config(document, environ={})
    with pytest.raises(ConfigError) as caught:
        resolve_passwords(config, environ={}, path=tmp_path / "refreshd.toml", urls=True)
    message = str(caught.value)
    assert "notify[0].url_file: cannot read the file it names" in message
    assert "a relative url_file is read from" in message
    assert "password" not in message

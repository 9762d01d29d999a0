"""`[[notify]]` tables (webhooks told of events) and each server's `ping_url` /
`ping_url_env` (a healthchecks.io-style dead-man's switch).

Both URLs are secrets, like a password: Slack and most webhooks carry their token in the
URL, a ping URL is the check's only key. They are read as passwords are (`passwords.py`),
only when a command needs them (the daemon, and `check`, which says whether the daemon
could: `resolve_passwords(..., urls=True)`), never
quoted in an error, and once read they join `Config.secrets()`, which the log and the
VICIdial client mask.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import PrivateAttr, SecretStr, field_validator, model_validator

from refreshd.config.credentials import Table
from refreshd.config.fields import Name
from refreshd.config.passwords import PasswordSources, password_from_env, password_from_file
from refreshd.config.problems import invalid_at
from refreshd.core.ledger import Kind

__all__ = [
    "DEFAULT_EVENTS",
    "EVENT_NAMES",
    "NotifyConfig",
    "check_url",
    "env_name",
    "read_url",
    "unique_names",
]

# Every event a [[notify]] table may ask for: the ledger's changes and a verified
# refresh's verdicts (events.py logs both).
EVENT_NAMES: tuple[str, ...] = (
    *(str(kind) for kind in Kind),
    "refresh.applied",
    "refresh.not_applied",
)
DEFAULT_EVENTS: tuple[str, ...] = (
    "server.suspended",
    "credentials.suspended",
    "slot.missed",
    "refresh.not_applied",
    "server.resumed",
    "credentials.resumed",
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_URL_KEYS = ("url", "url_env", "url_file")


def check_url(secret: str, where: str) -> None:
    """ValueError unless `secret` (from `where`) is an http(s) URL with a host. Never
    quotes it: it is the webhook's (or the check's) key."""
    hint = "give the whole URL the service shows, e.g. https://hooks.example.com/T000/B000/XXXX"
    if not secret or any(char.isspace() for char in secret):
        raise ValueError(f"{where} must be a URL without spaces; {hint} (the value is not shown)")
    try:
        parts = urlsplit(secret)
        parts.port  # noqa: B018 -- parsing the port is what validates it
    except ValueError:
        raise ValueError(f"{where} is not a valid URL; {hint} (the value is not shown)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{where} must start with https:// (or http://) and name a host; {hint} "
            "(the value is not shown)"
        )


def env_name(value: str | None) -> str | None:
    """A `*_env` key's value: a variable name, never the secret itself (not quoted)."""
    if value is not None and not _ENV_NAME.fullmatch(value):
        raise ValueError(
            "is not an environment variable name (letters, digits and '_', not starting "
            "with a digit); give the name of the variable that holds the URL, never the URL "
            "itself (the value is not shown)"
        )
    return value


def read_url(
    inline: SecretStr | None, env: str | None, file: Path | None, sources: PasswordSources
) -> SecretStr | None:
    """The URL from whichever of the three keys is given; ValueError saying why not."""
    try:
        if inline is not None:
            return inline
        if env is not None:
            return password_from_env(env, sources.environ, check_url)
        if file is not None:
            return password_from_file(file, sources, check_url)
    except ValueError as error:
        # The password readers' words, said of a URL (their text never holds the value).
        text = str(error).replace(" or use password_file", "")
        text = text.replace("the password", "the URL").replace("password_file", "url_file")
        raise ValueError(text) from None
    return None


def unique_names(tables: tuple[NotifyConfig, ...]) -> tuple[NotifyConfig, ...]:
    seen: set[str] = set()
    for table in tables:
        if table.name in seen:
            raise ValueError(f"duplicate [[notify]] name {table.name!r}: give each its own name")
        seen.add(table.name)
    return tables


class NotifyConfig(Table):
    """`[[notify]]`: a webhook told of events: exactly one of url, url_env, url_file; the
    body's `format` ("json": the event as logged; "slack": one readable line); `events`."""

    name: Name
    url: SecretStr | None = None
    url_env: str | None = None
    url_file: Path | None = None
    format: Literal["json", "slack"] = "json"
    events: tuple[str, ...] = DEFAULT_EVENTS

    _secret: SecretStr | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_url(value.get_secret_value(), "the URL")
        return value

    @field_validator("url_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return env_name(value)

    @field_validator("url_file", mode="before")
    @classmethod
    def _file(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty: give the path of the file holding the URL")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(
                f"must not be empty; leave it out for the default {list(DEFAULT_EVENTS)}"
            )
        unknown = [name for name in value if name not in EVENT_NAMES]
        if unknown:
            raise ValueError(
                f"unknown event {', '.join(map(repr, unknown))}; the events are "
                + ", ".join(EVENT_NAMES)
            )
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [key for key in _URL_KEYS if getattr(self, key) is not None]
        if len(given) != 1:
            found = f" (found {' and '.join(given)})" if given else ""
            raise invalid_at(
                (),
                "give exactly one of url_env (an environment variable), url_file (a file, "
                f"e.g. a systemd credential) or url{found}",
            )
        self._secret = self.url
        return self

    @property
    def url_key(self) -> str:
        return next(key for key in _URL_KEYS if getattr(self, key) is not None)

    @property
    def secret(self) -> str | None:
        """The URL in plain text once read: for the sender and the redactor only."""
        return None if self._secret is None else self._secret.get_secret_value()

    def with_url(self, sources: PasswordSources) -> Self:
        """A copy holding the URL read from `sources`; ValueError saying why it cannot be."""
        if self._secret is not None:
            return self
        copy = self.model_copy()
        copy._secret = read_url(None, self.url_env, self.url_file, sources)
        return copy

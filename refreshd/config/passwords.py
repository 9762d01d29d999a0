"""Reading the password a [credentials.NAME] table points to, and checking VICIdial can use it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr, ValidationInfo

from refreshd.config.fields import LOGIN_KEEPS

_MAX_PASSWORD_FILE = 4096


@dataclass(frozen=True)
class PasswordSources:
    """Where password_env and a relative password_file are looked up (`resolve_passwords`)."""

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
        credentials_dir = self.environ.get("CREDENTIALS_DIRECTORY")
        if credentials_dir:
            return (
                " (a relative password_file is read from $CREDENTIALS_DIRECTORY, "
                f"{credentials_dir})"
            )
        return (
            " (a relative password_file is read from $CREDENTIALS_DIRECTORY when set, "
            f"else from the config file's directory, {self.config_dir or Path.cwd()})"
        )


def password_sources(info: ValidationInfo) -> PasswordSources:
    """The validation's PasswordSources; os.environ when validated without one."""
    context = info.context
    if isinstance(context, PasswordSources):
        return context
    return PasswordSources(environ=os.environ)


# Errors name password_env and password_file by their place, never by their value: a
# password put there by mistake would otherwise be printed (and land in the journal).
_NAMED_VARIABLE = "the environment variable it names"
_NAMED_FILE = "the file it names"


# A password's check: ValueError unless the other side can use it (`where` names the origin).
Check = Callable[[str, str], None]


def password_from_env(
    name: str, environ: Mapping[str, str], check: Check | None = None
) -> SecretStr:
    """The password in the environment variable `name`; ValueError saying what to fix.
    `check`: which passwords are usable (default: those VICIdial can check)."""
    value = environ.get(name)
    if value is None:
        raise ValueError(
            f"{_NAMED_VARIABLE} is not set; set it in refreshd's environment (systemd "
            "Environment= or EnvironmentFile=, docker -e) or use password_file (the name is "
            "not shown, in case the password was put here by mistake)"
        )
    (check or check_password)(value, _NAMED_VARIABLE)
    return SecretStr(value)


def password_from_file(
    path: Path, context: PasswordSources, check: Check | None = None
) -> SecretStr:
    """The password in the file at `path`, one final newline removed; ValueError saying what
    to fix. `check`: as for `password_from_env`."""
    full = context.password_file_path(path)
    try:
        with full.open("rb") as file:
            raw = file.read(_MAX_PASSWORD_FILE + 1)
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{_NAMED_FILE} is not UTF-8 text") from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or "cannot be opened"
        raise ValueError(f"cannot read {_NAMED_FILE}: {reason}{context.file_hint(path)}") from None
    if len(raw) > _MAX_PASSWORD_FILE:
        raise ValueError(f"{_NAMED_FILE} is larger than 4 KiB: it should hold just the password")
    # `echo pw > file` and editors add one newline; it is not part of the password.
    # A second one stays, and is refused as a filtered character.
    text = text.removesuffix("\n").removesuffix("\r")
    (check or check_password)(text, _NAMED_FILE)
    return SecretStr(text)


def check_password(secret: str, where: str) -> None:
    """ValueError unless VICIdial would check `secret` as given (`where` names its origin)."""
    # Never quote the secret, nor the characters that are wrong in it.
    if not secret:
        raise ValueError(f"{where} is empty")
    if not LOGIN_KEEPS.fullmatch(secret):
        raise ValueError(
            f"{where} contains characters VICIdial removes before checking the login (it "
            "keeps only letters, digits, '-' and '_'), so this password can never log in; "
            "set a password of only those characters, in VICIdial and here"
        )

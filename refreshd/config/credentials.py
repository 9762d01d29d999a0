"""`[credentials.NAME]` tables: a VICIdial user and where its password comes from, read only
when a command asks (`with_password`); the password keys every table with a password shares
(`PasswordTable`, also `[databases.NAME]`); and the base every config table shares."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, PrivateAttr, SecretStr, field_validator, model_validator

from refreshd.config.fields import VicidialUser
from refreshd.config.passwords import (
    PasswordSources,
    check_password,
    password_from_env,
    password_from_file,
)
from refreshd.config.problems import invalid_at

__all__ = ["Credentials", "CredentialsConfig", "PasswordTable", "Table"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PASSWORD_KEYS = ("password", "password_env", "password_file")


class Table(BaseModel):
    # frozen: values are hashable and comparable, so a reload can tell changed servers
    # from unchanged ones. extra=forbid: a misspelt key is an error, never ignored.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


@dataclass(frozen=True)
class Credentials:
    """A VICIdial login, password resolved: what a request needs. Safe to log or repr."""

    name: str  # the [credentials.NAME] table
    user: str
    password: SecretStr
    source_kind: Literal["inline", "env", "file"]


class PasswordTable(Table):
    """A table with exactly one of password, password_env, password_file.

    Validation checks the shape; an inline password is kept at once, the others are read by
    `with_password()` (see `Config.with_passwords`) and kept privately. A relative
    password_file is read from $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) when that
    is set, else from the config file's directory. `check_secret` says which passwords the
    other side can use.
    """

    password: SecretStr | None = None
    password_env: str | None = None
    password_file: Path | None = None

    _secret: SecretStr | None = PrivateAttr(default=None)
    _source_kind: Literal["inline", "env", "file"] = PrivateAttr(default="inline")

    @staticmethod
    def check_secret(secret: str, where: str) -> None:
        """ValueError unless `secret` (from `where`) can be used; any non-empty one here."""
        if not secret:
            raise ValueError(f"{where} is empty")

    @field_validator("password")
    @classmethod
    def _password_characters(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            cls.check_secret(value.get_secret_value(), "the password")
        return value

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            # Never quoted: a value that is no variable name is most often the password.
            raise ValueError(
                "is not an environment variable name (letters, digits and '_', not "
                "starting with a digit); give the name of the variable that holds the "
                "password, never the password itself (the value is not shown)"
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
    def password_read(self) -> bool:
        """Whether the password is at hand (inline, or read by `with_password`)."""
        return self._secret is not None

    @property
    def password_key(self) -> str:
        """The key that gives the password: password_env, password_file or password."""
        return next(key for key in _PASSWORD_KEYS if getattr(self, key) is not None)

    @property
    def secret(self) -> str | None:
        """The password in plain text once read: for a connection or the redactor only."""
        return None if self._secret is None else self._secret.get_secret_value()

    def with_password(self, sources: PasswordSources) -> Self:
        """A copy holding the password read from `sources`; ValueError saying why it cannot
        be read (the place is `password_key`)."""
        if self._secret is not None:
            return self
        copy = self.model_copy()
        if self.password_env is not None:
            copy._secret = password_from_env(self.password_env, sources.environ, self.check_secret)
            copy._source_kind = "env"
        elif self.password_file is not None:
            copy._secret = password_from_file(self.password_file, sources, self.check_secret)
            copy._source_kind = "file"
        return copy


class CredentialsConfig(PasswordTable):
    """`[credentials.NAME]`: a VICIdial user and exactly one of password, password_env,
    password_file (`PasswordTable`); `Config.credentials_for()` hands them out."""

    user: VicidialUser

    @staticmethod
    def check_secret(secret: str, where: str) -> None:
        check_password(secret, where)  # only what VICIdial keeps can ever log in

    def resolved(self, name: str) -> Credentials:
        """This table as a `Credentials` value: user plus the resolved password."""
        if self._secret is None:
            # A bug, not an operator's error: the command asked for no passwords.
            raise ValueError(f"credentials {name!r}: password not read (see with_passwords)")
        return Credentials(name, self.user, self._secret, self._source_kind)

"""`[state]`: the store several instances share, a PostgreSQL or MariaDB/MySQL database (issue
13). Without it, the daemon keeps its state in the SQLite file at daemon.state_path. The URL
never holds a password; password_env or password_file give one (optional: trust or socket
authentication need none), read only when a command opens the store (`with_password`)."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Annotated, Self

from pydantic import AfterValidator, model_validator

from refreshd.config.credentials import PasswordTable
from refreshd.config.fields import Duration, between
from refreshd.config.problems import invalid_at
from refreshd.dburl import DatabaseUrl, parse_database_url

__all__ = ["LEASE_DEFAULT", "StateConfig", "default_instance"]

LEASE_DEFAULT = timedelta(seconds=15)
_INSTANCE_MAX = 200  # the claims' instance column


def _state_url(value: str) -> str:
    # ValueError saying what to write instead (a password in it is refused, never repeated)
    return str(parse_database_url(value, ("postgresql", "mysql")))


def _instance(value: str) -> str:
    if not value.strip() or not value.isprintable():
        raise ValueError("must be a name of printable characters, e.g. web-1")
    if len(value) > _INSTANCE_MAX:
        raise ValueError(f"must be at most {_INSTANCE_MAX} characters")
    return value


class StateConfig(PasswordTable):
    """`[state]`: `url = "postgresql://USER@HOST:PORT/DB"` (or `mysql://`), at most one of
    password_env and password_file, the claims' `lease` and this instance's name."""

    url: Annotated[str, AfterValidator(_state_url)]
    lease: Annotated[Duration, between(timedelta(seconds=5), timedelta(minutes=5))] = LEASE_DEFAULT
    instance: Annotated[str, AfterValidator(_instance)] | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        # Overrides PasswordTable's: here no password at all is fine (trust, socket auth).
        if self.password is not None:
            raise invalid_at(
                ("password",),
                "is not read here: the state database's password goes in an environment "
                "variable (password_env) or a file (password_file), never in the config",
            )
        if self.password_env is not None and self.password_file is not None:
            raise invalid_at((), "give at most one of password_env and password_file")
        return self

    @property
    def parsed(self) -> DatabaseUrl:
        return parse_database_url(self.url, ("postgresql", "mysql"))

    @property
    def password_key(self) -> str:
        return "password_file" if self.password_file is not None else "password_env"

    @property
    def instance_name(self) -> str:
        """This instance's name in the claims: `instance`, else hostname:pid."""
        return self.instance or default_instance()


def default_instance() -> str:
    """An instance's name when the config gives none: hostname:pid (unique on a host, and
    says where to look)."""
    return f"{socket.gethostname()}:{os.getpid()}"

"""`[databases.NAME]` tables: read-only access to a cluster's VICIdial database, for verified
refreshes; the password comes from password_env, password_file or password, read only when a
command asks (`PasswordTable`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from refreshd.config.credentials import PasswordTable
from refreshd.dburl import DatabaseUrl, parse_database_url

__all__ = ["DatabaseConfig"]


def _database_url(value: str) -> str:
    return str(parse_database_url(value))  # ValueError saying what to write instead


class DatabaseConfig(PasswordTable):
    """`[databases.NAME]`: `url = "mysql://USER@HOST:PORT/DATABASE"` (never a password in it)
    and exactly one of password_env, password_file, password."""

    url: Annotated[str, AfterValidator(_database_url)]

    @property
    def parsed(self) -> DatabaseUrl:
        return parse_database_url(self.url)

"""`mysql://USER@HOST:PORT/DATABASE`: where a cluster's VICIdial database is, never its password."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 3306
_SCHEMES = ("mysql", "mariadb")


@dataclass(frozen=True)
class DatabaseUrl:
    user: str
    host: str
    port: int
    database: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mysql://{self.user}@{host}:{self.port}/{self.database}"


def parse_database_url(text: str) -> DatabaseUrl:
    """The parts of a database URL; ValueError saying what to write instead. A password in
    the URL is refused: it would be shown wherever the URL is (logs, `check`, status)."""
    example = "mysql://refreshd_ro@vicidb.example.com:3306/asterisk"
    try:
        parts = urlsplit(text.strip())
        port = parts.port or DEFAULT_PORT
    except ValueError as error:
        raise ValueError(f"not a database URL ({error}); write it as {example}") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise ValueError(f"the scheme must be mysql:// (MariaDB or MySQL); e.g. {example}")
    if parts.password is not None:
        raise ValueError(
            "a password in the URL would be shown wherever the URL is; remove it and use "
            "password_env or password_file"
        )
    database = unquote(parts.path.lstrip("/"))
    if not parts.username or not parts.hostname or not database or "/" in database:
        raise ValueError(f"give a user, a host and a database name, as in {example}")
    if parts.query or parts.fragment:
        raise ValueError(f"no ?options or #fragment are understood; write it as {example}")
    return DatabaseUrl(unquote(parts.username), parts.hostname, port, database)

"""Database URLs: `mysql://USER@HOST:PORT/DATABASE` (MariaDB or MySQL) and
`postgresql://USER@HOST:PORT/DATABASE`. Never a password: one in the URL is refused, since the
URL is shown wherever the database is named (logs, `check`, `status`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

# scheme as written -> (the engine's name, its default port)
_ENGINES = {
    "mysql": ("mysql", 3306),
    "mariadb": ("mysql", 3306),
    "postgresql": ("postgresql", 5432),
    "postgres": ("postgresql", 5432),
}
_EXAMPLES = {
    "mysql": "mysql://refreshd@db.example.com:3306/asterisk",
    "postgresql": "postgresql://refreshd@db.example.com:5432/refreshd",
}


@dataclass(frozen=True)
class DatabaseUrl:
    user: str
    host: str
    port: int
    database: str
    engine: str = "mysql"  # "mysql" (MariaDB/MySQL) or "postgresql"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.engine}://{self.user}@{host}:{self.port}/{self.database}"


def parse_database_url(text: str, engines: Sequence[str] = ("mysql",)) -> DatabaseUrl:
    """The parts of a database URL for one of `engines`; ValueError saying what to write
    instead, never repeating a password."""
    example = " or ".join(_EXAMPLES[engine] for engine in engines)
    try:
        parts = urlsplit(text.strip())
        engine, default_port = _ENGINES.get(parts.scheme.lower(), ("", 0))
        port = parts.port or default_port
    except ValueError as error:
        raise ValueError(f"not a database URL ({error}); write it as {example}") from None
    if engine not in engines:
        schemes = " or ".join(f"{engine}://" for engine in engines)
        raise ValueError(f"the scheme must be {schemes}; e.g. {example}")
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
    return DatabaseUrl(unquote(parts.username), parts.hostname, port, database, engine)

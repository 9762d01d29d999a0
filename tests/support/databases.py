"""The machine's database servers as tests use them: MariaDB (127.0.0.1:3306, root, empty
password) and PostgreSQL (127.0.0.1:5432, postgres, trust). A database of the test's own, and
database users of its own, each dropped at the end. Under CI a server that does not answer
fails the test; elsewhere the test skips saying why."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from refreshd.dburl import DatabaseUrl

HOST = "127.0.0.1"
SERVERS = {  # engine -> (port, administrator)
    "mysql": (3306, "root"),
    "postgresql": (5432, "postgres"),
}


def _admin(engine: str) -> Any:
    port, user = SERVERS[engine]
    try:
        if engine == "postgresql":
            import psycopg

            return psycopg.connect(
                host=HOST, port=port, user=user, dbname="postgres", autocommit=True
            )
        import pymysql

        return pymysql.connect(host=HOST, port=port, user=user, password="", autocommit=True)
    except Exception as error:  # each driver's own connection error
        reason = f"{engine} on {HOST}:{port} (user {user}) does not answer: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the database tests, not skip them")
        pytest.skip(reason)


def _quote(engine: str, name: str) -> str:
    return f'"{name}"' if engine == "postgresql" else f"`{name}`"


@contextmanager
def scratch_database(engine: str = "mysql", prefix: str = "refreshd_test") -> Iterator[DatabaseUrl]:
    """A new empty database, as the administrator's URL; dropped on leaving."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = _admin(engine)
    port, user = SERVERS[engine]
    try:
        admin.cursor().execute(f"CREATE DATABASE {_quote(engine, name)}")
        yield DatabaseUrl(user, HOST, port, name, engine)
    finally:
        if engine == "postgresql":
            admin.execute(f"DROP DATABASE IF EXISTS {_quote(engine, name)} WITH (FORCE)")
        else:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {_quote(engine, name)}")
        admin.close()


@contextmanager
def admin_connection(engine: str, database: str) -> Iterator[Any]:
    """The administrator's own connection to a scratch database, outside autocommit (a
    transaction a test holds open: another client's locks); closed on leaving."""
    port, user = SERVERS[engine]
    if engine == "postgresql":
        import psycopg

        conn: Any = psycopg.connect(host=HOST, port=port, user=user, dbname=database)
    else:
        import pymysql

        conn = pymysql.connect(host=HOST, port=port, user=user, password="", database=database)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def database_user(grants: list[str], password: str) -> Iterator[str]:
    """A new MariaDB user with `password` and these GRANTs ('SELECT ON db.table'); dropped
    on leaving. The user name is returned."""
    name = f"ro_{secrets.token_hex(4)}"
    admin = _admin("mysql")
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s", (password,))
            for grant in grants:
                cursor.execute(f"GRANT {grant} TO '{name}'@'%'")
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP USER IF EXISTS '{name}'@'%'")
        admin.close()


def telephony_boxes() -> list[Any]:
    """Three telephony servers (dial1-3), and a database-only box that generates no
    Asterisk conf: its flag never clears, and refreshd must not wait for it."""
    from refreshd.simulator import SimServer

    return [
        SimServer("10.0.0.11", server_id="dial1"),
        SimServer("10.0.0.12", server_id="dial2"),
        SimServer("10.0.0.13", server_id="dial3"),
        SimServer("10.0.0.20", server_id="db1", generate_vicidial_conf=False),
    ]


@contextmanager
def verified_cluster(
    boxes: list[Any], password: str, **options: Any
) -> Iterator[tuple[Any, DatabaseUrl]]:
    """A started simulator (`options`: its users, keepalive_interval...) whose `boxes`
    (SimServers) are mirrored into a scratch MariaDB database, and the URL of a read-only
    user of it with exactly the grants refreshd documents (`password` is theirs)."""
    from refreshd.simulator import Simulator
    from refreshd.simulator.database import SimDatabase

    with scratch_database() as url:
        mirror = SimDatabase(url)
        grants = [f"SELECT ON `{url.database}`.{table}" for table in ("servers", "system_settings")]
        try:
            with (
                Simulator(host=HOST, port=0, servers=boxes, database=mirror, **options) as sim,
                database_user(grants, password) as user,
            ):
                yield sim, DatabaseUrl(user, url.host, url.port, url.database)
        finally:
            mirror.close()

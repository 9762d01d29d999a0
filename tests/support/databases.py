"""The machine's database servers as tests use them: MariaDB (127.0.0.1:3306, root, empty
password) and PostgreSQL (127.0.0.1:5432, postgres, trust). A database of the test's own, and
database users of its own, each dropped at the end. Under CI a server that does not answer
fails the test; elsewhere the test skips saying why."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from refreshd.dburl import DatabaseUrl

HOST = "127.0.0.1"
# A lease timed by a database server's clock, which a FakeClock cannot advance: a test that
# waits for one to run out waits this long. Short, yet long enough that the few statements a
# test runs while a lease must still hold are done in time on a loaded 2-core machine
# (300 ms, 400 ms and 1 s failed there: a holder's lease lapsed between two statements).
REAL_LEASE = timedelta(seconds=3)
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


# The read-only database user's password in the tests' verified clusters, and the variable
# their configs read it from.
DB_PASSWORD = "ro-Pass_4567"
DB_ENV = {"EAST_DB_PASSWORD": DB_PASSWORD}


@contextmanager
def good_cluster() -> Iterator[tuple[Any, DatabaseUrl]]:
    """`verified_cluster` of `telephony_boxes()`, the simulator's good user logging in, the
    keepalives running every second."""
    from refreshd.simulator import SimUser
    from tests.support.config import GOOD_PASSWORD, GOOD_USER

    with verified_cluster(
        telephony_boxes(),
        DB_PASSWORD,
        users=[SimUser(GOOD_USER, GOOD_PASSWORD)],
        keepalive_interval=1.0,
    ) as found:
        yield found


def verified_config(
    tmp_path: Path, sim: Any, database: DatabaseUrl, *, verify_timeout: str = "10s"
) -> Path:
    """A daemon's config: one server, east, in a window open now (the daemon refreshes at
    once) and verified on `database` (its password from EAST_DB_PASSWORD); metrics on a
    port of the daemon's choosing."""
    from refreshd.simulator import API_PATH
    from tests.support.config import GOOD_PASSWORD, GOOD_USER, window_from_now, write_daemon_config

    return write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[
            {
                "name": "east",
                "api_url": sim.url + API_PATH,
                "credentials": "main",
                "windows": [window_from_now(0, 600)],
                "database": "east",
                "verify_timeout": verify_timeout,
            }
        ],
        credentials={"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        databases={"east": {"url": str(database), "password_env": "EAST_DB_PASSWORD"}},
        daemon={
            "state_path": str(tmp_path / "state.db"),
            "metrics_listen": "127.0.0.1:0",
            "shutdown_grace": "1s",
        },
    )

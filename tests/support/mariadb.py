"""The machine's MariaDB (127.0.0.1:3306, root, empty password) as tests use it: a database
of the test's own, and database users of its own, each dropped at the end. Under CI a
MariaDB that does not answer fails the test; elsewhere the test skips saying why."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pymysql
import pytest

from refreshd.verify.url import DatabaseUrl

HOST, PORT, ADMIN = "127.0.0.1", 3306, "root"


def _admin(database: str | None = None) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
    try:
        return pymysql.connect(
            host=HOST, port=PORT, user=ADMIN, password="", database=database, autocommit=True
        )
    except pymysql.MySQLError as error:
        reason = f"MariaDB on {HOST}:{PORT} (user {ADMIN}, no password) does not answer: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the database tests, not skip them")
        pytest.skip(reason)


@contextmanager
def scratch_database(prefix: str = "refreshd_test") -> Iterator[DatabaseUrl]:
    """A new empty database, as the admin user's URL; dropped on leaving."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = _admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
        yield DatabaseUrl(ADMIN, HOST, PORT, name)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@contextmanager
def database_user(grants: list[str], password: str) -> Iterator[str]:
    """A new user with `password` and these GRANTs ('SELECT ON db.table'); dropped on
    leaving. The user name is returned."""
    name = f"ro_{secrets.token_hex(4)}"
    admin = _admin()
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

"""What a cluster's database tells about the cluster, read as the read-only user refreshd
documents, from the simulator's mirror in a real MariaDB: its identity (same cluster twice)
and the last refresh it took, on the database's own clock (settling a lost answer)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests

from refreshd.config import resolve_passwords, validate_config
from refreshd.core.verification import Taken, refresh_taken
from refreshd.simulator import API_PATH, Simulator, SimUser
from refreshd.verify import ClusterDatabase, DatabaseUrl
from refreshd.verify.clusters import learn_clusters
from tests.support.databases import telephony_boxes, verified_cluster

PASSWORD = "api-pass-123"
DB_PASSWORD = "ro-pass-4567"


@pytest.fixture
def cluster() -> Iterator[tuple[Simulator, DatabaseUrl]]:
    with verified_cluster(telephony_boxes(), DB_PASSWORD, users=[SimUser("api", PASSWORD)]) as c:
        yield c


def _refresh(sim: Simulator) -> None:
    fields = {"function": "server_refresh", "user": "api", "pass": PASSWORD}
    data = {**fields, "source": "test", "stage": "REFRESH"}
    body = requests.post(sim.url + API_PATH, data=data, timeout=10)
    assert body.text.startswith("SUCCESS"), body.text


def test_the_identity_is_every_servers_row_and_the_settings(
    cluster: tuple[Simulator, DatabaseUrl],
) -> None:
    _, url = cluster
    database = ClusterDatabase(url, DB_PASSWORD)
    try:
        facts = database.identify()
    finally:
        database.close()

    assert facts.where == (url.host, url.port, url.database)
    # Every row, the database-only box too: it is part of what makes this cluster.
    assert facts.servers == (
        ("db1", "10.0.0.20"),
        ("dial1", "10.0.0.11"),
        ("dial2", "10.0.0.12"),
        ("dial3", "10.0.0.13"),
    )
    assert facts.version
    assert facts.reload_timestamp is None  # never refreshed yet


def test_a_refresh_sets_reload_timestamp_to_the_database_clock_to_the_second(
    cluster: tuple[Simulator, DatabaseUrl],
) -> None:
    sim, url = cluster
    database = ClusterDatabase(url, DB_PASSWORD)
    try:
        before = database.read()
        started = datetime.now(UTC)
        _refresh(sim)
        sent = time.monotonic()
        after = database.read()
        read_at = datetime.now(UTC)
        spent = time.monotonic() - sent
    finally:
        database.close()

    assert before.reload_timestamp is None
    assert after.reload_timestamp is not None
    assert after.database_now is not None
    assert after.reload_timestamp.microsecond == 0  # NOW(): whole seconds
    assert after.reload_timestamp <= after.database_now
    assert after.database_now - after.reload_timestamp < timedelta(seconds=2 + spent)
    # The pure decision, on what was really read: the refresh was taken after `started`...
    uncertainty = timedelta(seconds=spent)
    decided = refresh_taken(
        started,
        after.reload_timestamp,
        read_at=read_at,
        database_now=after.database_now,
        uncertainty=uncertainty,
    )
    assert decided in (Taken.YES, Taken.UNKNOWN)  # UNKNOWN only within the clocks' margin
    # ... and not after a start five seconds later.
    later = refresh_taken(
        started + timedelta(seconds=5),
        after.reload_timestamp,
        read_at=read_at,
        database_now=after.database_now,
        uncertainty=uncertainty,
    )
    assert later is Taken.NO


def test_two_tables_reaching_one_database_by_other_names_are_one_cluster(
    cluster: tuple[Simulator, DatabaseUrl],
) -> None:
    sim, url = cluster
    _refresh(sim)  # a reload stamp to confirm with
    other_host = replace(url, host="localhost")  # the same MariaDB, another name for it
    data = {
        "credentials": {"main": {"user": "api", "password": PASSWORD}},
        "databases": {
            "east": {"url": str(url), "password_env": "DB_PW"},
            "east-local": {"url": str(other_host), "password_env": "DB_PW"},
        },
        "servers": [
            {
                "name": name,
                "api_url": sim.url + API_PATH,
                "credentials": "main",
                "windows": ["02:00-04:00"],
                "database": table,
            }
            for name, table in (("a", "east"), ("b", "east-local"), ("c", "east-local"))
        ],
    }
    environ = {"DB_PW": DB_PASSWORD}
    config = resolve_passwords(validate_config(data, environ=environ), environ=environ)

    groups, unread = learn_clusters(config)

    assert unread == {}
    (group,) = groups
    assert group.servers == ("a", "b", "c")
    assert group.database == "east"
    assert "same 4 servers rows" in group.why

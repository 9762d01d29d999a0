"""Verified refreshes against a real MariaDB: the simulator writes the cluster's `servers` and
`system_settings` rows as VICIdial and its keepalive scripts would; refreshd reads them as a
read-only user and settles each refresh as applied or not applied."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refreshd.clock import FakeClock
from refreshd.core.verification import Applied, NotApplied, Verdict
from refreshd.simulator import SimServer, Simulator, SimUser, load_simulator_config, serve
from refreshd.verify import ClusterDatabase, DatabaseProblem, DatabaseUrl
from refreshd.verify.poller import Verifier
from tests.support.databases import (
    database_user,
    scratch_database,
    telephony_boxes,
    verified_cluster,
)
from tests.support.ports import refused_port
from tests.support.simulator import refresh_directly

PASSWORD = "api-pass-123"
DB_PASSWORD = "ro-pass-4567"
BOXES = telephony_boxes()


@pytest.fixture
def cluster() -> Iterator[tuple[Simulator, DatabaseUrl]]:
    """The simulator, and the URL of a read-only user with the documented grants."""
    with verified_cluster(BOXES, DB_PASSWORD, users=[SimUser("api", PASSWORD)]) as found:
        yield found


@pytest.fixture
def reader(cluster: tuple[Simulator, DatabaseUrl]) -> Iterator[ClusterDatabase]:
    _, url = cluster
    database = ClusterDatabase(url, DB_PASSWORD)
    yield database
    database.close()


def refresh(sim: Simulator) -> None:
    refresh_directly(sim, "api", PASSWORD)


def test_a_refresh_flags_every_box_and_the_keepalives_clear_all_but_a_dead_one(
    cluster: tuple[Simulator, DatabaseUrl], reader: ClusterDatabase
) -> None:
    sim, _ = cluster
    before = reader.read()
    assert [b.server_id for b in before.boxes] == ["dial1", "dial2", "dial3"]
    assert before.flagged == ()
    assert before.reload_timestamp is None

    sim.set_keepalive("10.0.0.12", alive=False)
    refresh(sim)
    flagged = reader.read()
    assert [b.server_id for b in flagged.flagged] == ["dial1", "dial2", "dial3"]
    assert flagged.reload_timestamp is not None
    assert abs(flagged.reload_timestamp - datetime.now(UTC)) < timedelta(seconds=5)

    sim.keepalive()
    after = reader.read()
    assert [(b.server_ip, b.server_id) for b in after.flagged] == [("10.0.0.12", "dial2")]


def _verifier(reader: ClusterDatabase, clock: FakeClock) -> tuple[Verifier, list[Verdict]]:
    verdicts: list[Verdict] = []
    return Verifier(clock, {"east": reader}), verdicts


def test_the_verifier_waits_for_the_keepalives_then_says_applied(
    cluster: tuple[Simulator, DatabaseUrl], reader: ClusterDatabase
) -> None:
    sim, _ = cluster
    clock = FakeClock(datetime(2026, 11, 30, 2, 0, tzinfo=UTC))
    verifier, verdicts = _verifier(reader, clock)
    refresh(sim)
    verifier.expect("east", "east", clock.now(), timedelta(minutes=3), verdicts.append)

    clock.advance(timedelta(seconds=5))
    verifier.look()
    assert verdicts == []
    assert verifier.pending() == ["east"]

    clock.advance(timedelta(seconds=40))
    sim.keepalive()
    verifier.look()
    assert verdicts == [Applied(seconds=45.0, boxes=3)]
    assert verifier.pending() == []


def test_a_dead_keepalive_is_named_once_verify_timeout_passes(
    cluster: tuple[Simulator, DatabaseUrl], reader: ClusterDatabase
) -> None:
    sim, _ = cluster
    clock = FakeClock(datetime(2026, 11, 30, 2, 0, tzinfo=UTC))
    verifier, verdicts = _verifier(reader, clock)
    sim.set_keepalive("10.0.0.13", alive=False)
    refresh(sim)
    verifier.expect("east", "east", clock.now(), timedelta(minutes=3), verdicts.append)
    sim.keepalive()

    clock.advance(timedelta(minutes=2, seconds=59))
    verifier.look()
    assert verdicts == []  # not yet: the box's cron may still come round
    clock.advance(timedelta(seconds=1))
    verifier.look()
    assert verdicts == [NotApplied(seconds=180.0, flagged=(("10.0.0.13", "dial3"),), boxes=3)]


def test_a_missing_grant_is_a_lasting_problem_naming_the_grant(
    cluster: tuple[Simulator, DatabaseUrl],
) -> None:
    _, url = cluster
    only_servers = [f"SELECT ON `{url.database}`.servers"]
    with database_user(only_servers, DB_PASSWORD) as user:
        database = ClusterDatabase(DatabaseUrl(user, url.host, url.port, url.database), DB_PASSWORD)
        with pytest.raises(DatabaseProblem) as caught:
            database.read()
    assert caught.value.lasting
    assert (
        f"GRANT SELECT ON {url.database}.servers and SELECT ON {url.database}.system_settings"
        in str(caught.value)
    )


def test_a_wrong_password_is_a_lasting_problem_that_never_shows_the_password(
    cluster: tuple[Simulator, DatabaseUrl],
) -> None:
    _, url = cluster
    with database_user([f"SELECT ON `{url.database}`.*"], DB_PASSWORD) as user:
        database = ClusterDatabase(
            DatabaseUrl(user, url.host, url.port, url.database), "not-the-password-9"
        )
        with pytest.raises(DatabaseProblem) as caught:
            database.read()
    assert caught.value.lasting
    assert "access denied" in str(caught.value)
    assert "not-the-password-9" not in str(caught.value)


def test_an_unreachable_database_is_a_passing_problem_and_the_verdict_says_why() -> None:
    with refused_port() as port:
        database = ClusterDatabase(DatabaseUrl("ro", "127.0.0.1", port, "asterisk"), "pw-12345678")
        clock = FakeClock(datetime(2026, 11, 30, 2, 0, tzinfo=UTC))
        verdicts: list[Verdict] = []
        verifier = Verifier(clock, {"east": database})
        verifier.expect("east", "east", clock.now(), timedelta(seconds=10), verdicts.append)
        verifier.look()
        assert verdicts == []
        clock.advance(timedelta(seconds=10))
        verifier.look()
    (found,) = verdicts
    assert isinstance(found, NotApplied)
    assert found.flagged == ()
    assert found.unread is not None
    assert "cannot read the database" in found.unread


def test_the_simulator_file_describes_boxes_and_a_dead_keepalive(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(
        '[[servers]]\nserver_ip = "10.0.0.11"\nserver_id = "dial1"\n'
        '[[servers]]\nserver_ip = "10.0.0.12"\nkeepalive_alive = false\n'
        '[[servers]]\nserver_ip = "10.0.0.20"\ngenerate_vicidial_conf = false\n'
    )
    _, servers = load_simulator_config(path)
    assert servers == [
        SimServer("10.0.0.11", server_id="dial1"),
        SimServer("10.0.0.12", keepalive_alive=False),
        SimServer("10.0.0.20", generate_vicidial_conf=False),
    ]
    assert [s.id for s in servers] == ["dial1", "srv12", "srv20"]


def test_refreshd_simulator_with_a_database_mirrors_its_flags(
    tmp_path: Path,
) -> None:
    with scratch_database() as url:
        stop = threading.Event()
        done: list[int] = []
        runner = threading.Thread(
            target=lambda: done.append(serve("127.0.0.1:0", None, stop=stop, database=str(url)))
        )
        runner.start()
        try:
            reader = ClusterDatabase(url, None)
            deadline = time.monotonic() + 10
            while not reader_sees_boxes(reader) and time.monotonic() < deadline:
                stop.wait(0.05)
            assert [b.server_ip for b in reader.read().boxes] == ["10.0.0.11", "10.0.0.12"]
            reader.close()
        finally:
            stop.set()
            runner.join(10)
    assert done == [0]


def reader_sees_boxes(reader: ClusterDatabase) -> bool:
    try:
        return bool(reader.read().boxes)
    except DatabaseProblem:  # the tables do not exist until the simulator made them
        return False

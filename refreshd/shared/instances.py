"""The instances sharing a store, visible to each other and to `refreshd status`: one row per
instance (its name, host, pid, when it started, its last heartbeat by the database's clock),
written at each lease renewal; an instance is live while its heartbeat is younger than a
lease. Which runs each holds is read from the claims table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from refreshd.shared.claims import DONE, LOGIN_PREFIX
from refreshd.shared.claims import TABLE as CLAIMS
from refreshd.shared.engines import Engine
from refreshd.store.rows import time

TABLE = "refreshd_instances"
SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    instance VARCHAR(200) NOT NULL PRIMARY KEY,
    host VARCHAR(200) NOT NULL,
    pid BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    beat_ms BIGINT NOT NULL,
    schedule VARCHAR(64)
)"""
# Added after the table first shipped: a digest of the runs the instance's config plans
# (claiming.schedule_fingerprint), so that instances planning different runs are told.
_SCHEDULE = f"ALTER TABLE {TABLE} ADD COLUMN schedule VARCHAR(64)"


@dataclass(frozen=True)
class Instance:
    """One instance as the table shows it, with the runs (server, due) it holds now."""

    name: str
    host: str
    pid: int
    started: datetime
    last_beat: datetime
    holds: tuple[tuple[str, datetime], ...] = ()
    schedule: str | None = None  # None: an instance too old to say


def create(engine: Engine) -> None:
    with engine.transaction() as tx:
        tx.execute(SCHEMA)
    if not _has_schedule(engine):
        try:
            with engine.transaction() as tx:
                tx.execute(_SCHEDULE)
        except engine.driver_errors():
            if not _has_schedule(engine):  # not added by another instance meanwhile
                raise


def _has_schedule(engine: Engine) -> bool:
    try:
        with engine.transaction(write=False) as tx:
            tx.execute(f"SELECT schedule FROM {TABLE} WHERE 1 = 0")
            tx.fetchall()
    except engine.driver_errors():
        return False
    return True


class DuplicateInstance(Exception):
    """Another live process has this instance's name: two daemons given one
    `[state].instance`. The claims tell instances apart by name only, so each would take
    the other's live claims over as its own (and call a run twice)."""


def beat(
    engine: Engine,
    name: str,
    host: str,
    pid: int,
    lease_ms: int | None = None,
    schedule: str | None = None,
) -> None:
    """This instance's heartbeat, by the database's clock (its first one is its start).
    Given `lease_ms`, refused (DuplicateInstance) while another process (host, pid) under
    this name beat less than a lease ago; a restart under a fixed name waits that long."""
    with engine.transaction() as tx:
        now = engine.now_ms(tx)
        tx.execute(
            f"SELECT host, pid, beat_ms FROM {TABLE} WHERE instance = %s{engine.for_update()}",
            (name,),
        )
        found = tx.fetchone()
        if found is None:
            tx.execute(
                f"INSERT INTO {TABLE} (instance, host, pid, started_ms, beat_ms, schedule) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (name, host, pid, now, now, schedule),
            )
            return
        other = (str(found[0]), int(found[1]))
        if lease_ms is not None and other != (host, pid) and int(found[2]) > now - lease_ms:
            raise DuplicateInstance(
                f"another live instance is named {name!r} (host {other[0]}, pid {other[1]}): "
                "give each instance its own [state].instance; this one claims nothing "
                "until that one has been silent for a lease"
            )
        tx.execute(
            f"UPDATE {TABLE} SET beat_ms = %s, host = %s, pid = %s, schedule = %s "
            "WHERE instance = %s",
            (now, host, pid, schedule, name),
        )


_LIVE = (
    f"SELECT instance, host, pid, started_ms, beat_ms, schedule FROM {TABLE} "
    "WHERE beat_ms > %s ORDER BY instance"
)
_HELD = (
    f"SELECT instance, server, due FROM {CLAIMS} "
    "WHERE lease_until > %s AND state <> %s ORDER BY server, due"
)


def prune(engine: Engine, older_ms: int) -> int:
    """Forget instances whose last heartbeat is older than `older_ms`; how many."""
    with engine.transaction() as tx:
        now = engine.now_ms(tx)
        return tx.execute(f"DELETE FROM {TABLE} WHERE beat_ms < %s", (now - older_ms,))


def live(engine: Engine, lease_ms: int) -> list[Instance]:
    """The instances whose heartbeat is younger than a lease, with the runs each holds (a
    live lease on a run not yet done), by name. A reader's transaction (`status` opens the
    store read-only); none before an instance with claims has run (no tables yet)."""
    with engine.transaction(write=False) as tx:
        if not {TABLE, CLAIMS} <= engine.tables(tx):
            return []
        now = engine.now_ms(tx)
        tx.execute(_LIVE, (now - lease_ms,))
        rows = tx.fetchall()
        tx.execute(_HELD, (now, DONE))
        held = tx.fetchall()
    return _instances(rows, held)


def _instances(rows: list[Any], held: list[Any]) -> list[Instance]:
    holds: dict[str, list[tuple[str, datetime]]] = {}
    for instance, server, due in held:
        if not str(server).startswith(LOGIN_PREFIX):
            holds.setdefault(str(instance), []).append((str(server), time(str(due))))
    return [
        Instance(
            str(name),
            str(host),
            int(pid),
            _instant(int(started)),
            _instant(int(last)),
            tuple(holds.get(str(name), ())),
            None if schedule is None else str(schedule),
        )
        for name, host, pid, started, last, schedule in rows
    ]


def _instant(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def expire_others(engine: Engine, instance: str) -> int:
    """End every other daemon's leases now (not their fences): for a store only `instance`
    can be using (a state file under its lock), where any other daemon is a dead process.
    How many. A one-shot command's login lease (oneshot.py: it writes no heartbeat row) is
    left to run out: the command may be alive beside this daemon, logging in."""
    with engine.transaction() as tx:
        return tx.execute(
            f"UPDATE {CLAIMS} SET lease_until = 0 WHERE instance <> %s AND state <> %s"
            f" AND instance IN (SELECT instance FROM {TABLE})",
            (instance, DONE),
        )

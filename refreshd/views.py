"""What `plan`, `status` and `history` show, as plain data (JSON-ready dicts)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from refreshd.binding import schedule_of
from refreshd.config import Config
from refreshd.core.ledger import LoginEntry, login_key
from refreshd.core.planning import earliest_start, next_fire
from refreshd.core.policy import WaitKind
from refreshd.core.runs import next_runs
from refreshd.core.slots import Schedule
from refreshd.shared import instances
from refreshd.shared.instances import Instance
from refreshd.store import CallRecord, ServerState, StateError, StateStore, Verification

__all__ = [
    "WAIT_WORDS",
    "applied_text",
    "daemon_entry",
    "history_rows",
    "iso",
    "plan_document",
    "status_document",
    "stored_status",
    "verification_entry",
]

# What holds a server back, in words, for each policy.WaitKind (`status`'s HELD column and
# the status page).
WAIT_WORDS = {
    WaitKind.REFUSED_LOGIN: "login refused: credentials wait",
    WaitKind.LOCKED_OUT: "login locked by VICIdial: credentials wait",
    WaitKind.FAILED_LOGIN_BUDGET: "failed-login budget spent: logins paused",
}


def iso(moment: datetime | None) -> str | None:
    """UTC instants as `...Z`; local ones keep their offset."""
    if moment is None:
        return None
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if moment.utcoffset() == UTC.utcoffset(None) else text


def plan_document(config: Config, start: datetime, count: int) -> dict[str, Any]:
    """The next `count` runs of every server from `start`, by the windows alone (no state:
    suspensions and runs already done are `status`'s business)."""
    servers = []
    # Servers with equal schedules (same windows, zone, blackouts, repeat and offset) have
    # the same runs: a fleet of 10,000 often has a dozen schedules.
    shown: dict[Schedule, list[dict[str, str | None]]] = {}
    for server in config.servers:
        schedule = schedule_of(config, server)
        runs = shown.get(schedule)
        if runs is None:
            runs = shown[schedule] = [
                {
                    "due": iso(run.due),
                    "due_local": iso(run.due.astimezone(server.zone)),
                    "slot_start": iso(run.slot.start),
                    "slot_start_local": iso(run.slot.start.astimezone(server.zone)),
                    "slot_end": iso(run.slot.end),
                    "slot_end_local": iso(run.slot.end.astimezone(server.zone)),
                }
                for run in next_runs(schedule, start, count)
            ]
        servers.append({"server": server.name, "timezone": server.timezone, "runs": runs})
    return {"from": iso(start.astimezone(UTC)), "count": count, "servers": servers}


def daemon_entry(running: bool, pid: int | None, heartbeat: datetime | None) -> dict[str, Any]:
    """Whether a daemon holds the state file's lock (and its pid), and its last heartbeat."""
    return {"running": running, "pid": pid, "heartbeat": iso(heartbeat)}


def status_document(
    config: Config,
    states: dict[str, ServerState],
    logins: Mapping[str, LoginEntry],
    last_done: dict[str, datetime],
    now: datetime,
    *,
    daemon: dict[str, Any],
    verifications: Mapping[str, Verification] | None = None,
) -> dict[str, Any]:
    """The daemon (`daemon_entry`), and per server: last outcome, last success,
    suspension, credentials wait, next run (as the daemon would plan it from this state),
    and whether its last verified refresh was applied (`verification_entry`). `logins`:
    the ledger's login entries; a wait is what the login gate would apply
    (`LoginEntry.gate_wait`: a refused login, a lock-out or the failed-login budget)."""
    verifications = verifications or {}
    servers = []
    for server in config.servers:
        state = states.get(server.name, ServerState(server.name))
        # Waits are kept per VICIdial user; an older refreshd kept them per table.
        user = login_key(config.credentials[server.credentials].user)
        waiting = None
        for key in (user, server.credentials):
            if key in logins:
                waiting = waiting or logins[key].gate_wait(now)
        until = state.suspended_until
        suspended = until if until is not None and until > now else None
        start = earliest_start(now, suspended, waiting.until if waiting else None)
        planned = next_fire(schedule_of(config, server), start, last_done.get(server.name))
        servers.append(
            {
                "server": server.name,
                "last_outcome": str(state.last_outcome) if state.last_outcome else None,
                "last_attempt_at": iso(state.last_attempt_at),
                "last_success_at": iso(state.last_success_at),
                "next_run": iso(planned.at) if planned else None,
                "next_slot": iso(planned.run.slot.start) if planned else None,
                "suspended_until": iso(suspended),
                "suspension_reason": state.suspension_reason if suspended else None,
                "credentials": server.credentials,
                "credentials_wait_until": iso(waiting.until) if waiting else None,
                "credentials_wait_kind": str(waiting.kind) if waiting else None,
                "credentials_wait_reason": waiting.reason if waiting else None,
                "verified": verification_entry(verifications.get(server.name)),
            }
        )
    return {"at": iso(now), "daemon": daemon, "servers": servers}


def stored_status(
    config: Config,
    store: StateStore | None,
    now: datetime,
    *,
    running: bool | None,
    pid: int | None,
) -> dict[str, Any]:
    """The `status_document` of what `store` holds (None: no state file yet), for a daemon
    that is `running` as `pid` or not (None: a shared store, which has no lock to ask; some
    instance runs if one beat within three heartbeats): what `refreshd status` prints and
    the status page at `/` shows, read the same way. Raises StateError."""
    states: dict[str, ServerState] = {}
    logins: dict[str, LoginEntry] = {}
    done: dict[str, datetime] = {}
    beat, verified = None, {}
    if store is not None:
        states = store.all_server_states()
        logins = dict(store.load().logins)
        done = store.last_runs_done()
        beat = store.last_beat()
        verified = store.last_verifications()
    if running is None:
        from refreshd.daemon import HEARTBEAT  # the daemon's module is heavy: only here

        running = beat is not None and (now - beat).total_seconds() <= 3 * HEARTBEAT
    daemon = daemon_entry(running, pid, beat)
    document = status_document(
        config, states, logins, done, now, daemon=daemon, verifications=verified
    )
    document["instances"] = [] if store is None else _live_instances(config, store)
    return document


def _live_instances(config: Config, store: StateStore) -> list[dict[str, Any]]:
    """The instances sharing the store, live by their heartbeat, and the runs each holds."""
    from refreshd.claiming import lease_of

    lease_ms = int(lease_of(config).total_seconds() * 1000)
    try:
        return [instance_entry(each) for each in instances.live(store.engine, lease_ms)]
    except Exception as err:  # each driver's own errors
        raise StateError(f"{store.where}: cannot read the instances table: {err}") from None


def history_rows(records: list[CallRecord]) -> list[dict[str, Any]]:
    return [
        {
            "at": iso(r.at),
            "server": r.server,
            "outcome": str(r.outcome),
            "attempt": r.attempt,
            "duration_ms": r.duration_ms,
            "slot": iso(r.slot_start),
            "due": iso(r.due),
            "http_status": r.http_status,
            "servers_flagged": r.servers_flagged,
            "detail": r.detail,
            "verified": verification_entry(r.verification),
        }
        for r in records
    ]


def verification_entry(found: Verification | None) -> dict[str, Any] | None:
    """Whether a verified refresh was applied, for `status` and `history`; None when the
    call was not verified (no database, not `ok`, or the verdict still to come)."""
    if found is None:
        return None
    return {
        "applied": found.applied,
        "call_at": iso(found.at),
        "seconds": found.seconds,
        "detail": found.detail,
    }


def applied_text(entry: dict[str, Any] | None) -> str:
    """A `verification_entry` in a few words for a table: `yes (42s)`, `NO (180s)`, `-`."""
    if entry is None:
        return "-"
    return f"{'yes' if entry['applied'] else 'NO'} ({entry['seconds']:.0f}s)"


def instance_entry(instance: Instance) -> dict[str, Any]:
    """An instance sharing the store, for `status --json`: who it is, its heartbeat (by
    the database's clock) and the runs it holds."""
    return {
        "instance": instance.name,
        "host": instance.host,
        "pid": instance.pid,
        "started": instance.started.isoformat(),
        "last_heartbeat": instance.last_beat.isoformat(),
        "holds": [{"server": server, "due": due.isoformat()} for server, due in instance.holds],
    }

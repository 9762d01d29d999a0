"""The commands that only read: `plan` (the config), `status` and `history` (the state file,
read-only, beside a running daemon). None of them reads a password."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from refreshd.claiming import lease_of
from refreshd.cli.loading import EXIT_FAILED, EXIT_OK, EXIT_USAGE, load, unknown_servers
from refreshd.cli.text import print_table, safe, say, when
from refreshd.clock import system_clock
from refreshd.config import Config
from refreshd.core.policy import WaitKind
from refreshd.instance import lock_holder
from refreshd.shared.instances import live_in_file
from refreshd.store import StateError, StateStore
from refreshd.views import (
    applied_text,
    daemon_entry,
    history_rows,
    instance_entry,
    plan_document,
    status_document,
)

__all__ = ["history", "plan", "status"]


def plan(args: argparse.Namespace) -> int:
    config = load(args, passwords=False)
    if isinstance(config, int):
        return config
    start = args.start or system_clock.now()
    document = plan_document(config, start, args.count)
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    rows = [
        [
            entry["server"],
            run["due_local"],
            run["slot_start_local"],
            run["slot_end_local"],
        ]
        for entry in document["servers"]
        for run in entry["runs"]
        or [{"due_local": "-", "slot_start_local": "no window ahead", "slot_end_local": "-"}]
    ]
    print_table(["SERVER", "DUE (LOCAL)", "SLOT START", "SLOT END"], rows)
    return EXIT_OK


def _read_store(config: Config) -> StateStore | None:
    """The state file, read-only; None (and a note) before the daemon's first start."""
    path = config.daemon.state_path
    try:
        present = path.exists()
    except OSError as err:  # a directory this user may not search, a name too long
        raise StateError(
            f"cannot look at the state file {path}: {err.strerror or err}; run this command "
            "as the user refreshd runs as (or with sudo), or fix daemon.state_path"
        ) from None
    if not present:
        say(f"refreshd: no state file at {path} yet (the daemon has not run)")
        return None
    return StateStore.open_readonly(path)


def status(args: argparse.Namespace) -> int:
    config = load(args, passwords=False)
    if isinstance(config, int):
        return config
    now = system_clock.now()
    try:
        holder = lock_holder(config.daemon.state_path)
    except OSError as err:
        say(f"refreshd: cannot tell whether a daemon runs: {err.strerror or err}")
        return EXIT_FAILED
    states, logins, done, beat, verified = {}, {}, {}, None, {}
    try:
        store = _read_store(config)
        if store is not None:
            with store:
                states = store.all_server_states()
                logins = dict(store.load().logins)
                done = store.last_runs_done()
                beat = store.last_beat()
                verified = store.last_verifications()
    except StateError as err:
        say(f"refreshd: {err}")
        return EXIT_FAILED
    daemon = daemon_entry(holder.running, holder.pid, beat)
    document = status_document(
        config, states, logins, done, now, daemon=daemon, verifications=verified
    )
    # The instances sharing the store, live by their heartbeat, and the runs each holds.
    live = live_in_file(config.daemon.state_path, now, int(lease_of(config).total_seconds() * 1000))
    document["instances"] = [instance_entry(each) for each in live]
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(_daemon_line(holder.running, holder.pid, beat, now, utc=args.utc))
    for each in live:
        holds = ", ".join(
            f"{server} (due {when(due, now, utc=args.utc)})" for server, due in each.holds
        )
        print(
            f"instance {each.name}: {each.host} pid {each.pid}, "
            f"heartbeat {when(each.last_beat, now, utc=args.utc)}, holds {holds or 'nothing'}"
        )
    print_table(
        ["SERVER", "LAST", "LAST CALL", "LAST SUCCESS", "APPLIED", "NEXT RUN", "HELD"],
        [_status_row(entry, now, utc=args.utc) for entry in document["servers"]],
    )
    return EXIT_OK


def _daemon_line(
    running: bool, pid: int | None, beat: datetime | None, now: datetime, *, utc: bool
) -> str:
    heartbeat = f"last heartbeat {when(beat, now, utc=utc)}" if beat else "no heartbeat recorded"
    if running:
        return f"daemon: running (pid {pid if pid is not None else 'unknown'}), {heartbeat}"
    return f"daemon: NOT running ({heartbeat})"


# The HELD column's words for each policy.WaitKind.
_WAIT_WORDS = {
    WaitKind.REFUSED_LOGIN: "login refused: credentials wait",
    WaitKind.LOCKED_OUT: "login locked by VICIdial: credentials wait",
    WaitKind.FAILED_LOGIN_BUDGET: "failed-login budget spent: logins paused",
}


def _status_row(entry: dict[str, Any], now: datetime, *, utc: bool) -> list[str]:
    def shown(key: str) -> str:
        value = entry[key]
        return when(datetime.fromisoformat(value), now, utc=utc) if value else "-"

    held = ""
    if entry["suspended_until"]:
        held = f"suspended until {shown('suspended_until')}"
    elif entry["credentials_wait_until"]:
        what = _WAIT_WORDS.get(entry["credentials_wait_kind"], "credentials wait")
        held = f"{what} until {shown('credentials_wait_until')}"
    return [
        entry["server"],
        entry["last_outcome"] or "-",
        shown("last_attempt_at"),
        shown("last_success_at"),
        applied_text(entry["verified"]),
        shown("next_run") if entry["next_run"] else "none ahead",
        held,
    ]


def history(args: argparse.Namespace) -> int:
    config = load(args, passwords=False)
    if isinstance(config, int):
        return config
    if args.server is not None and unknown_servers("history", [args.server], config):
        return EXIT_USAGE
    try:
        store = _read_store(config)
        records = []
        if store is not None:
            with store:
                records = store.history(server=args.server, since=args.since, limit=args.limit)
    except StateError as err:
        say(f"refreshd: {err}")
        return EXIT_FAILED
    if args.json:
        for row in history_rows(records):
            print(json.dumps(row))
        return EXIT_OK
    now = system_clock.now()
    print_table(
        ["AT", "SERVER", "OUTCOME", "TRY", "MS", "APPLIED", "DETAIL"],
        [
            [
                when(r.at, now, utc=args.utc, seconds=True),
                r.server,
                str(r.outcome),
                str(r.attempt),
                str(r.duration_ms),
                applied_text(row["verified"]),
                _cut(_detail(r.detail, row["verified"])),
            ]
            for r, row in zip(records, history_rows(records), strict=True)
        ],
    )
    return EXIT_OK


def _detail(detail: str | None, verified: dict[str, Any] | None) -> str:
    # A refresh not applied says why first: the boxes still flagged, or the database.
    why = verified["detail"] if verified and not verified["applied"] else None
    return "; ".join(text for text in (why, detail) if text)


def _cut(detail: str, width: int = 80) -> str:
    # Escaped before it is cut: the width is what shows, and no escape is cut in half.
    shown = safe(detail)
    return shown if len(shown) <= width else shown[: width - 3] + "..."

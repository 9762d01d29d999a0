"""The commands that only read: `plan` (the config), `status` and `history` (the state file,
read-only, beside a running daemon). None of them reads a password."""

from __future__ import annotations

import argparse
import contextlib
import json
from datetime import datetime
from typing import Any

from refreshd.cli.loading import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    load,
    state_password,
    unknown_servers,
)
from refreshd.cli.text import print_table, safe, say, when
from refreshd.clock import system_clock
from refreshd.config import Config
from refreshd.instance import Holder, lock_holder
from refreshd.store import StateError, StateStore
from refreshd.store.opening import open_store
from refreshd.views import (
    WAIT_WORDS,
    applied_text,
    history_rows,
    plan_document,
    stored_status,
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


def _read_store(args: argparse.Namespace, config: Config) -> StateStore | None:
    """The store, read-only; None (and a note) before the daemon's first start. A `[state]`
    database's password is read (the only one these commands read): it opens the store."""
    if config.state is not None:
        read = state_password(args, config)
        if isinstance(read, int):
            raise StateError("the [state] password cannot be read (see above)")
        return open_store(read, readonly=True)
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
        # A shared store has no lock file: whether an instance runs is read from its beat.
        holder = Holder(False, None) if config.state else lock_holder(config.daemon.state_path)
    except OSError as err:
        say(f"refreshd: cannot tell whether a daemon runs: {err.strerror or err}")
        return EXIT_FAILED
    try:
        store = _read_store(args, config)
        with store or contextlib.nullcontext():
            # A shared store has no lock file: whether an instance runs is read from its beat.
            running = None if config.state is not None else holder.running
            document = stored_status(config, store, now, running=running, pid=holder.pid)
    except StateError as err:
        say(f"refreshd: {err}")
        return EXIT_FAILED
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    beat = document["daemon"]["heartbeat"]
    beat = datetime.fromisoformat(beat) if beat else None
    daemon = document["daemon"]
    print(_daemon_line(daemon["running"], daemon["pid"], beat, now, utc=args.utc))
    for each in document["instances"]:
        holds = ", ".join(
            f"{held['server']} (due {when(datetime.fromisoformat(held['due']), now, utc=args.utc)})"
            for held in each["holds"]
        )
        print(
            f"instance {each['instance']}: {each['host']} pid {each['pid']}, heartbeat "
            f"{when(datetime.fromisoformat(each['last_heartbeat']), now, utc=args.utc)}, "
            f"holds {holds or 'nothing'}"
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


def _status_row(entry: dict[str, Any], now: datetime, *, utc: bool) -> list[str]:
    def shown(key: str) -> str:
        value = entry[key]
        return when(datetime.fromisoformat(value), now, utc=utc) if value else "-"

    held = ""
    if entry["suspended_until"]:
        held = f"suspended until {shown('suspended_until')}"
    elif entry["credentials_wait_until"]:
        what = WAIT_WORDS.get(entry["credentials_wait_kind"], "credentials wait")
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
        store = _read_store(args, config)
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

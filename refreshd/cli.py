"""The `refreshd` command: parse arguments, call into the package, map results to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from refreshd import __version__
from refreshd.clock import system_clock
from refreshd.config import Config, ConfigError, config_warnings, default_config_path, load_config
from refreshd.config.advice import ignored_proxies_note
from refreshd.core.durations import parse_duration
from refreshd.core.vicidial import Outcome
from refreshd.logs import configure, get_logger, redactor
from refreshd.store import StateError, StateStore

if TYPE_CHECKING:
    from refreshd.runner import Runner
from refreshd.views import history_rows, plan_document, status_document

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd's RestartPreventExitStatus=78


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `refreshd plan --json | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


_FORCE_HELP = (
    "log in even while a credentials wait runs (after a refused login or a lock-out); "
    "still one login at a time until one works"
)

# For containers: Docker's restart policies cannot exempt exit 78 (README, Docker).
_WAIT_HELP = "with an invalid config, wait for SIGHUP to read it again instead of exiting 78"

Command = Callable[[str, str], argparse.ArgumentParser]


def _read_commands(command: Command) -> None:
    """The commands that only read: plan, status, history."""
    p = command("plan", "show each server's next runs, from the windows alone")
    p.add_argument(
        "--from",
        dest="start",
        type=_instant,
        default=None,
        help="ISO 8601 instant (UTC when it has no offset; default now)",
    )
    p.add_argument("--count", type=_positive_int, default=3, help="runs per server (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(handler=_plan)

    p = command("status", "per server: last outcome, next run, suspension")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(handler=_status)

    p = command("history", "recent calls from the state store, newest first")
    p.add_argument("--server", default=None, help="only this server")
    p.add_argument(
        "--since", type=_since, default=None, help="ISO 8601 instant or a duration ago (24h)"
    )
    p.add_argument("--limit", type=_positive_int, default=100, help="at most N (default 100)")
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.set_defaults(handler=_history)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refreshd",
        description="Schedules VICIdial server_refresh calls inside refresh windows.",
    )
    parser.add_argument("--version", action="version", version=f"refreshd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != "simulator":
            p.add_argument(
                "-c",
                "--config",
                type=Path,
                default=None,
                help="config file (default: $REFRESHD_CONFIG or /etc/refreshd/refreshd.toml)",
            )
        return p

    p = command("run", "run the daemon in the foreground (systemd Type=notify)")
    p.add_argument("--wait-for-config", action="store_true", help=_WAIT_HELP)
    p.set_defaults(handler=_run)

    p = command("check", "validate the config (exit 0 valid, 78 invalid)")
    p.add_argument(
        "--online",
        action="store_true",
        help="also probe each credentials' login and permission (side-effect free) and each "
        "server's reachability; exit 1 if any fails",
    )
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)
    p.set_defaults(handler=_check)

    p = command("refresh", "refresh servers now, outside windows, ignoring suspensions")
    p.add_argument("servers", nargs="*", metavar="NAME", help="servers to refresh")
    p.add_argument("--all", action="store_true", help="refresh every configured server")
    p.add_argument(
        "--dry-run", action="store_true", help="show the requests (password masked), send none"
    )
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)
    p.set_defaults(handler=_refresh)

    _read_commands(command)

    p = command("simulator", "run the bundled VICIdial API simulator on loopback")
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default %(default)s)")
    p.add_argument("--config", type=Path, default=None, help="users and servers TOML (see config/)")
    p.set_defaults(handler=_simulator)
    return parser


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 instant (e.g. 2027-03-14T00:00:00-05:00)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _since(text: str) -> datetime:
    try:
        return system_clock.now() - parse_duration(text)
    except ValueError:
        return _instant(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return int(text)


def _config_path(args: argparse.Namespace) -> Path:
    return args.config if args.config is not None else default_config_path()


def _load(args: argparse.Namespace) -> Config | int:
    """The config, or the exit code after saying why there is none."""
    path = _config_path(args)
    try:
        config = load_config(path)
    except ConfigError as err:
        print(f"refreshd: {err}", file=sys.stderr)
        return EXIT_CONFIG
    redactor.set_secrets(config.secrets())
    return config


def _check(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, int):
        return config
    path = _config_path(args)
    for warning in config_warnings(config, now=system_clock.now()):
        print(f"refreshd: warning: {warning}", file=sys.stderr)
    tables = f"{len(config.servers)} server(s), {len(config.credentials)} credentials"
    print(f"{path}: valid: {tables}, {len(config.blackouts)} blackout(s)")
    print(f"proxy: {config.client.proxy_shown}{ignored_proxies_note(os.environ)}")
    if not args.online:
        return EXIT_OK
    from refreshd.manual import online_check  # the HTTP stack: only for commands that call

    configure(sys.stderr)  # the report is stdout's; what the probes change is logged aside
    log = get_logger()
    with _login_runner(config, log, "refreshd check", force=args.force) as runner:
        if runner is None:
            return EXIT_FAILED
        lines = online_check(runner)
    width = max(len(line.subject) for line in lines)
    for line in lines:
        mark = "ok  " if line.ok else "FAIL"
        print(f"{mark}  {line.subject:<{width}}  {line.duration_ms:>5} ms  {line.detail}")
    failed = sum(not line.ok for line in lines)
    print(f"{len(lines) - failed} passed, {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


def _refresh(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, int):
        return config
    known = [server.name for server in config.servers]
    if args.all == bool(args.servers):
        print("refreshd refresh: name one or more servers, or --all", file=sys.stderr)
        return EXIT_USAGE
    names: list[str] = known if args.all else list(dict.fromkeys(args.servers))
    unknown = [name for name in names if name not in known]
    if unknown:
        print(
            f"refreshd refresh: unknown server(s) {', '.join(unknown)}; "
            f"configured: {', '.join(known)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    for warning in config_warnings(config, now=system_clock.now()):
        print(f"refreshd: warning: {warning}", file=sys.stderr)
    # The HTTP stack (requests, urllib3, ssl) is imported by the commands that call
    # VICIdial only: check, plan, status and history start ~0.15 s sooner without it.
    from refreshd.attempt import target_of
    from refreshd.manual import refresh_now

    if args.dry_run:
        width = max(len(name) for name in names)
        for name in names:
            target = target_of(config, config.server(name))
            body = urlencode(target.masked_params(), safe="*")
            print(f"{name:<{width}}  POST {target.api_url}  {body}")
        return EXIT_OK
    configure()
    log = get_logger()
    with _login_runner(config, log, "refreshd refresh", force=args.force) as runner:
        if runner is None:
            return EXIT_FAILED
        servers = [config.server(name) for name in names]
        if not args.force and (waits := runner.waits_before(servers)):
            for text in waits:
                print(
                    f"refreshd refresh: {text}; not refreshing (--force logs in anyway)",
                    file=sys.stderr,
                )
            return EXIT_FAILED
        results = refresh_now(runner, names)
    return EXIT_OK if all(results.get(n) is Outcome.OK for n in names) else EXIT_FAILED


@contextlib.contextmanager
def _login_runner(
    config: Config, log: object, command: str, *, force: bool
) -> Iterator[Runner | None]:
    """A one-shot command's runner on the journaled ledger: the credentials waits and the
    failed-login budget every process shares. None (having said why) when the state file
    cannot be read: without it a login could be one too many toward a lock-out. --force
    logs in anyway, past the waits (not the budget), recording nothing if it must."""
    from refreshd.runner import runner_for

    store: StateStore | None = None
    try:
        store = StateStore(config.daemon.state_path)
        runner = runner_for(config, store=store, clock=system_clock, log=log)
    except StateError as err:
        if store is not None:
            store.close()
        store = None
        if not force:
            print(
                f"{command}: {err}\nWithout the state file the credentials waits and the "
                "failed-login budget are unknown, so no login is tried (--force logs in "
                "anyway and records nothing).",
                file=sys.stderr,
            )
            yield None
            return
        print(f"refreshd: warning: not recording: {err}", file=sys.stderr)
        runner = runner_for(config, store=None, clock=system_clock, log=log)
    if force:
        runner.set_aside_waits()
    try:
        yield runner
    finally:
        if store is not None:
            store.close()


def _run(args: argparse.Namespace) -> int:
    from refreshd.daemon import run as run_daemon

    configure()
    return run_daemon(_config_path(args), wait_for_config=args.wait_for_config)


def _plan(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, int):
        return config
    start = args.start or system_clock.now()
    document = plan_document(config, start, args.count)
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    rows = [
        [entry["server"], run["due_local"], run["slot_start_local"], run["slot_end_local"]]
        for entry in document["servers"]
        for run in entry["runs"]
        or [{"due_local": "-", "slot_start_local": "no window ahead", "slot_end_local": "-"}]
    ]
    _print_table(["SERVER", "DUE (LOCAL)", "SLOT START", "SLOT END"], rows)
    return EXIT_OK


def _read_store(config: Config) -> StateStore | None:
    """The state file, read-only; None (and a note) before the daemon's first start."""
    path = config.daemon.state_path
    if not path.exists():
        print(f"refreshd: no state file at {path} yet (the daemon has not run)", file=sys.stderr)
        return None
    return StateStore.open_readonly(path)


def _status(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, int):
        return config
    now = system_clock.now()
    try:
        store = _read_store(config)
        if store is None:
            states, waits, done = {}, {}, {}
        else:
            with store:
                states = store.all_server_states()
                waits = store.all_credentials_waits()
                done = store.last_runs_done()
    except StateError as err:
        print(f"refreshd: {err}", file=sys.stderr)
        return EXIT_FAILED
    document = status_document(config, states, waits, done, now)
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    rows = []
    for entry in document["servers"]:
        held = entry["suspended_until"] and f"suspended until {entry['suspended_until']}"
        held = held or (
            entry["credentials_wait_until"]
            and f"credentials wait until {entry['credentials_wait_until']}"
        )
        rows.append(
            [
                entry["server"],
                entry["last_outcome"] or "-",
                entry["last_attempt_at"] or "-",
                entry["last_success_at"] or "-",
                entry["next_run"] or "none ahead",
                held or "",
            ]
        )
    _print_table(["SERVER", "LAST", "LAST CALL", "LAST SUCCESS", "NEXT RUN", "HELD"], rows)
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, int):
        return config
    try:
        store = _read_store(config)
        records = []
        if store is not None:
            with store:
                records = store.history(server=args.server, since=args.since, limit=args.limit)
    except StateError as err:
        print(f"refreshd: {err}", file=sys.stderr)
        return EXIT_FAILED
    rows = history_rows(records)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    _print_table(
        ["AT", "SERVER", "OUTCOME", "TRY", "MS", "DETAIL"],
        [
            [
                r["at"],
                r["server"],
                r["outcome"],
                str(r["attempt"]),
                str(r["duration_ms"]),
                (r["detail"] or "")[:80],
            ]
            for r in rows
        ],
    )
    return EXIT_OK


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


def _simulator(args: argparse.Namespace) -> int:
    from refreshd.simulator import serve

    return serve(args.listen, args.config)

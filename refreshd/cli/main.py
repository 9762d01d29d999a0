"""`main` and the parser: every command, its options, and what a Ctrl-C or a closed pipe
becomes."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from refreshd import __version__
from refreshd.cli import completion  # light: argparse and the standard library
from refreshd.cli.arguments import (
    MAX_HISTORY_LIMIT,
    MAX_PLAN_COUNT,
    count_up_to,
    instant,
    one_of,
    since,
)
from refreshd.cli.loading import EXIT_OK, EXIT_USAGE
from refreshd.cli.text import safe, survive_any_encoding
from refreshd.logs import LOG_FORMATS, LOG_LEVELS

__all__ = ["build_parser", "main"]

_FORCE_HELP = (
    "log in even while a credentials wait runs (after a refused login or a lock-out); "
    "still one login at a time until one works, and never past a spent failed-login budget"
)
_UTC_HELP = "times in UTC (default: this machine's local time)"

Command = Callable[[str, str], argparse.ArgumentParser]
Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    survive_any_encoding()
    parser = build_parser()
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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse's usage block above it buries the
    problem), made terminal-safe: it may quote what was typed."""

    def error(self, message: str) -> NoReturn:
        print(safe(f"{self.prog}: {message} (see {self.prog} --help)"), file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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

    _calling_commands(command)
    _read_commands(command)
    p = command("simulator", "run the bundled VICIdial API simulator on loopback")
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default %(default)s)")
    p.add_argument("--config", type=Path, default=None, help="users and servers TOML (see config/)")
    p.set_defaults(handler=_simulator)
    p = sub.add_parser("completion", help=_COMPLETION_HELP, description=_COMPLETION_HELP)
    p.add_argument("shell", choices=completion.SHELLS, help="the shell to complete in")
    p.set_defaults(handler=lambda args: _completion(parser, args.shell))
    return parser


_COMPLETION_HELP = "print the shell completion script: source <(refreshd completion bash)"


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    assert shell == "bash"  # argparse allowed only completion.SHELLS
    sys.stdout.write(completion.bash_script(parser))
    return EXIT_OK


def _later(module: str, name: str) -> Handler:
    """The handler `name` of refreshd.cli.`module`, imported when its command runs: the
    parser alone (--version, --help, a usage error) imports neither the config models
    nor the HTTP stack."""

    def handler(args: argparse.Namespace) -> int:
        command: Handler = getattr(importlib.import_module(f"refreshd.cli.{module}"), name)
        return command(args)

    return handler


# For containers: Docker's restart policies cannot exempt exit 78 (README, Docker).
_WAIT_HELP = "with an invalid config, wait for SIGHUP to read it again instead of exiting 78"


def _calling_commands(command: Command) -> None:
    """The commands that call VICIdial: run, check, refresh."""
    p = command("run", "run the daemon in the foreground (systemd Type=notify)")
    p.add_argument("--wait-for-config", action="store_true", help=_WAIT_HELP)
    _log_options(p)
    p.set_defaults(handler=_later("calls", "run"))

    p = command("check", "validate the config (exit 0 valid, 78 invalid)")
    p.add_argument(
        "--online",
        action="store_true",
        help="also probe each credentials' login and permission (side-effect free) and each "
        "server's reachability; exit 1 if any fails",
    )
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)
    p.set_defaults(handler=_later("calls", "check"))

    p = command("refresh", "refresh servers now, outside windows, ignoring suspensions")
    p.add_argument("servers", nargs="*", metavar="NAME", help="servers to refresh")
    p.add_argument("--all", action="store_true", help="refresh every configured server")
    p.add_argument(
        "--dry-run", action="store_true", help="show the requests (password masked), send none"
    )
    p.add_argument("--force", action="store_true", help=_FORCE_HELP)
    _log_options(p)
    p.set_defaults(handler=_later("calls", "refresh"))


def _log_options(p: argparse.ArgumentParser) -> None:
    """--log-format and --log-level, defaulting to $REFRESHD_LOG_FORMAT / $REFRESHD_LOG_LEVEL
    (argparse checks a default given as text with the option's type: a bad variable is the
    same usage error as a bad option)."""
    p.add_argument(
        "--log-format",
        type=one_of(LOG_FORMATS, "log format", "REFRESHD_LOG_FORMAT"),
        metavar="FORMAT",
        default=os.environ.get("REFRESHD_LOG_FORMAT") or "auto",
        help="auto (console on a terminal, JSON otherwise), json or console "
        "(default: $REFRESHD_LOG_FORMAT or auto)",
    )
    p.add_argument(
        "--log-level",
        type=one_of(LOG_LEVELS, "log level", "REFRESHD_LOG_LEVEL"),
        metavar="LEVEL",
        default=os.environ.get("REFRESHD_LOG_LEVEL") or "info",
        help="debug, info, warning or error (default: $REFRESHD_LOG_LEVEL or info)",
    )


def _read_commands(command: Command) -> None:
    """The commands that only read: plan, status, history."""
    p = command("plan", "show each server's next runs, from the windows alone")
    p.add_argument(
        "--from",
        dest="start",
        type=instant,
        default=None,
        help="ISO 8601 instant (UTC when it has no offset; default now)",
    )
    p.add_argument(
        "--count",
        type=count_up_to(MAX_PLAN_COUNT, "runs per server"),
        default=3,
        help=f"runs per server (default 3, at most {MAX_PLAN_COUNT:,})",
    )
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(handler=_later("reading", "plan"))

    p = command("status", "whether the daemon runs; per server: last outcome, next run, holds")
    p.add_argument("--json", action="store_true", help="one JSON document (times in UTC)")
    p.add_argument("--utc", action="store_true", help=_UTC_HELP)
    p.set_defaults(handler=_later("reading", "status"))

    p = command("history", "recent calls from the state store, newest first")
    p.add_argument("--server", default=None, help="only this server")
    p.add_argument(
        "--since", type=since, default=None, help="ISO 8601 instant or a duration ago (24h)"
    )
    p.add_argument(
        "--limit",
        type=count_up_to(MAX_HISTORY_LIMIT, "calls"),
        default=100,
        help=f"at most N (default 100, at most {MAX_HISTORY_LIMIT:,})",
    )
    p.add_argument("--json", action="store_true", help="JSON lines (times in UTC)")
    p.add_argument("--utc", action="store_true", help=_UTC_HELP)
    p.set_defaults(handler=_later("reading", "history"))


def _simulator(args: argparse.Namespace) -> int:
    from refreshd.simulator import serve

    return serve(args.listen, args.config)

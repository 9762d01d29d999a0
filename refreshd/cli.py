"""The `refreshd` command: parse arguments, call into the package, map results to exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

from refreshd import __version__
from refreshd.config import Config, ConfigError, config_warnings, default_config_path, load_config
from refreshd.logs import configure, get_logger, redactor
from refreshd.manual import online_check, refresh_now, target_of
from refreshd.state import StateError, StateStore
from refreshd.vicidial import Outcome

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

    p = command("check", "validate the config (exit 0 valid, 78 invalid)")
    p.add_argument(
        "--online",
        action="store_true",
        help="also probe each credentials' login and permission (side-effect free) and each "
        "server's reachability; exit 1 if any fails",
    )
    p.set_defaults(handler=_check)

    p = command("refresh", "refresh servers now, outside windows, ignoring suspensions")
    p.add_argument("servers", nargs="*", metavar="NAME", help="servers to refresh")
    p.add_argument("--all", action="store_true", help="refresh every configured server")
    p.add_argument(
        "--dry-run", action="store_true", help="show the requests (password masked), send none"
    )
    p.set_defaults(handler=_refresh)

    p = command("simulator", "run the bundled VICIdial API simulator on loopback")
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default %(default)s)")
    p.add_argument("--config", type=Path, default=None, help="users and servers TOML (see config/)")
    p.set_defaults(handler=_simulator)
    return parser


def _load(args: argparse.Namespace) -> Config | int:
    """The config, or the exit code after saying why there is none."""
    path = args.config if args.config is not None else default_config_path()
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
    path = args.config if args.config is not None else default_config_path()
    for warning in config_warnings(config):
        print(f"refreshd: warning: {warning}", file=sys.stderr)
    print(
        f"{path}: valid: {len(config.servers)} server(s), {len(config.credentials)} "
        f"credentials, {len(config.blackouts)} blackout(s)"
    )
    if not args.online:
        return EXIT_OK
    lines = online_check(config)
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
    if args.dry_run:
        width = max(len(name) for name in names)
        for name in names:
            target = target_of(config, config.server(name))
            body = urlencode(target.masked_params(), safe="*")
            print(f"{name:<{width}}  POST {target.api_url}  {body}")
        return EXIT_OK
    configure()
    log = get_logger()
    store = _open_store(config, log)
    try:
        results = refresh_now(config, names, store=store, log=log)
    finally:
        if store is not None:
            store.close()
    return EXIT_OK if all(results.get(n) is Outcome.OK for n in names) else EXIT_FAILED


def _open_store(config: Config, log: object) -> StateStore | None:
    """The state store, or None (with a warning) when it cannot be opened: a manual
    refresh is still worth doing, it just leaves no history."""
    try:
        return StateStore(config.daemon.state_path)
    except StateError as err:
        print(f"refreshd: warning: not recording this refresh: {err}", file=sys.stderr)
        return None


def _simulator(args: argparse.Namespace) -> int:
    from refreshd.simulator import serve

    return serve(args.listen, args.config)

"""The commands that call VICIdial: `run`, `check` and `refresh`. They read the passwords
(and plain `check` reports one that cannot be read, as the daemon would at start)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from refreshd.cli.loading import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    config_path,
    load,
    unknown_servers,
    with_passwords,
)
from refreshd.cli.text import safe, say
from refreshd.clock import system_clock
from refreshd.config import Config, config_warnings
from refreshd.config.advice import ignored_proxies_note
from refreshd.core.vicidial import Outcome
from refreshd.logs import configure, get_logger
from refreshd.store import StateError, StateStore
from refreshd.store.opening import open_store

if TYPE_CHECKING:
    from refreshd.runner import Runner

__all__ = ["check", "refresh", "run"]


def run(args: argparse.Namespace) -> int:
    from refreshd.daemon import run as run_daemon

    configure(level=args.log_level, log_format=args.log_format)
    # The daemon reads its passwords itself.
    return run_daemon(config_path(args), wait_for_config=args.wait_for_config)


def check(args: argparse.Namespace) -> int:
    # The URLs too: `check` says whether the daemon would start (or take a reload) on it.
    config = load(args, passwords=True, urls=True)
    if isinstance(config, int):
        return config
    for warning in config_warnings(config, now=system_clock.now()):
        say(f"refreshd: warning: {warning}")
    tables = f"{len(config.servers)} server(s), {len(config.credentials)} credentials"
    if config.databases:
        tables += f", {len(config.databases)} database(s)"
    print(safe(f"{config_path(args)}: valid: {tables}, {len(config.blackouts)} blackout(s)"))
    print(safe(f"proxy: {config.client.proxy_shown}{ignored_proxies_note(os.environ)}"))
    if not args.online:
        return EXIT_OK
    from refreshd.manual import online_check  # the HTTP stack: only for commands that call

    configure(sys.stderr)  # the report is stdout's; what the probes change is logged aside
    log = get_logger()
    with _login_runner(config, log, "refreshd check", force=args.force) as runner:
        if runner is None:
            return EXIT_FAILED
        lines = online_check(runner)
    subjects = [safe(line.subject) for line in lines]
    width = max(len(subject) for subject in subjects)
    for line, subject in zip(lines, subjects, strict=True):
        mark = ("WARN" if line.warning else "ok  ") if line.ok else "FAIL"
        print(f"{mark}  {subject:<{width}}  {line.duration_ms:>5} ms  {safe(line.detail)}")
    failed = sum(not line.ok for line in lines)
    warned = sum(line.warning for line in lines)
    warnings = f", {warned} warning(s)" if warned else ""
    print(f"{len(lines) - failed} passed, {failed} failed{warnings}")
    return EXIT_FAILED if failed else EXIT_OK


def refresh(args: argparse.Namespace) -> int:
    loaded = load(args, passwords=False)
    if isinstance(loaded, int):
        return loaded
    # The arguments first: a wrong name is a usage error (2) wherever it is typed, also
    # in a shell without the service's passwords.
    if args.all == bool(args.servers):
        say("refreshd refresh: name one or more servers, or --all")
        return EXIT_USAGE
    known = [server.name for server in loaded.servers]
    names: list[str] = known if args.all else list(dict.fromkeys(args.servers))
    if unknown_servers("refresh", names, loaded):
        return EXIT_USAGE
    config = with_passwords(args, loaded)
    if isinstance(config, int):
        return config
    for warning in config_warnings(config, now=system_clock.now()):
        say(f"refreshd: warning: {warning}")
    # The HTTP stack (requests, urllib3, ssl) is imported by the commands that call
    # VICIdial only: check, plan, status and history start ~0.15 s sooner without it.
    from refreshd.attempt import target_of
    from refreshd.manual import refresh_now

    if args.dry_run:
        width = max(len(name) for name in names)
        for name in names:
            target = target_of(config, config.server(name))
            body = urlencode(target.masked_params(), safe="*")
            print(safe(f"{name:<{width}}  POST {target.api_url}  {body}"))
        return EXIT_OK
    configure(level=args.log_level, log_format=args.log_format)
    log = get_logger()
    with _login_runner(config, log, "refreshd refresh", force=args.force) as runner:
        if runner is None:
            return EXIT_FAILED
        servers = [config.server(name) for name in names]
        if not args.force and (waits := runner.waits_before(servers)):
            for text in waits:
                say(f"refreshd refresh: not refreshing: {text}")
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
        store = open_store(config)
        runner = runner_for(config, store=store, clock=system_clock, log=log)
    except StateError as err:
        if store is not None:
            store.close()
        store = None
        if not force:
            say(
                f"{command}: {err}\nWithout the state store the credentials waits and the "
                "failed-login budget are unknown, so no login is tried (--force logs in "
                "anyway and records nothing)."
            )
            yield None
            return
        say(f"refreshd: warning: not recording: {err}")
        runner = runner_for(config, store=None, clock=system_clock, log=log)
    if force:
        runner.set_aside_waits()
    if runner.claims is not None:  # the login leases in the store, renewed while it runs
        runner.claims.start()
    try:
        yield runner
    finally:
        if runner.claims is not None:
            runner.claims.stop()
        if store is not None:
            store.close()

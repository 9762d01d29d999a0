"""Exit codes, and the config as each command needs it: the commands that call VICIdial
ask for the passwords; the ones that only read never touch them, so they work where the
daemon's environment and systemd credentials are absent (an operator's shell)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from refreshd.cli.text import say
from refreshd.logs import redactor

if TYPE_CHECKING:
    from refreshd.config import Config

# refreshd.config (pydantic and the models, most of a start's CPU) is imported by the
# functions that read a config: `refreshd --version`, --help and a usage error go without.

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "config_path",
    "load",
    "state_password",
    "unknown_servers",
    "with_passwords",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd's RestartPreventExitStatus=78


def config_path(args: argparse.Namespace) -> Path:
    from refreshd.config import default_config_path

    path: Path | None = args.config
    return path if path is not None else default_config_path()


def load(args: argparse.Namespace, *, passwords: bool, urls: bool = False) -> Config | int:
    """The config (with every password read if `passwords`; every [[notify]] and ping URL
    too if `urls`), or the exit code after saying why there is none."""
    from refreshd.config import ConfigError, load_config

    try:
        config = load_config(config_path(args))
    except ConfigError as err:
        say(f"refreshd: {err}")
        return EXIT_CONFIG
    if passwords:
        return with_passwords(args, config, urls=urls)
    redactor.set_secrets(config.secrets())  # inline passwords and the proxy's, read or not
    return config


def with_passwords(args: argparse.Namespace, config: Config, *, urls: bool = False) -> Config | int:
    """`config` (loaded without) with every password read (and every URL, if `urls`), or
    the exit code after saying why one cannot be: for a command that checks its own
    arguments first."""
    from refreshd.config import ConfigError, resolve_passwords

    path = config_path(args)
    try:
        config = resolve_passwords(config, path=path, urls=urls)
    except ConfigError as err:
        say(f"refreshd: {err}")
        return EXIT_CONFIG
    redactor.set_secrets(config.secrets())
    return config


def state_password(args: argparse.Namespace, config: Config) -> Config | int:
    """`config` with only `[state]`'s password read (the store's, which `status` and
    `history` need to open a shared store), or the exit code after saying why it cannot be."""
    state = config.state
    if state is None:
        return config
    from refreshd.config.passwords import PasswordSources

    path = config_path(args)
    sources = PasswordSources(os.environ, config_dir=path.parent)
    try:
        read = state.with_password(sources)
    except ValueError as err:
        say(f"refreshd: {path}: state.{state.password_key}: {err}")
        return EXIT_CONFIG
    config = config.model_copy(update={"state": read})
    redactor.set_secrets(config.secrets())
    return config


def unknown_servers(command: str, names: Sequence[str], config: Config) -> bool:
    """Whether any of `names` is no configured server (having said so, for exit 2)."""
    known = [server.name for server in config.servers]
    unknown = [name for name in names if name not in known]
    if unknown:
        say(
            f"refreshd {command}: unknown server(s) {', '.join(unknown)}; "
            f"configured: {', '.join(known)}"
        )
    return bool(unknown)

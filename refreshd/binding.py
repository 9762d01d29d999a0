"""The config read as the core's values: each server's schedule, the back-off policy and the
logins (VICIdial users) across the credentials tables."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping

# The models' module, not the package: config/advice.py asks for schedules too.
from refreshd.config.models import BackoffConfig, Config, ServerConfig
from refreshd.core.ledger import Logins, login_key
from refreshd.core.policy import Backoff
from refreshd.core.slots import Schedule, spread_offset
from refreshd.core.windows import AbsoluteWindow, WeeklyWindow

__all__ = ["backoff_of", "logins_of", "schedule_of", "server_fingerprint"]


def schedule_of(config: Config, server: ServerConfig) -> Schedule:
    """A server's timing as the pure window arithmetic wants it."""
    return Schedule(
        name=server.name,
        tz=server.zone,
        windows=server.windows,
        blackouts=config.blackouts_for(server.name),
        every=server.every,
        # Entries read from one [databases] table are one cluster: one offset, so they are
        # due together and their calls become one (core/clusters.CallGroups).
        offset=spread_offset(server.database or server.name, config.daemon.spread),
    )


def backoff_of(settings: BackoffConfig) -> Backoff:
    """The policy's value from the config's [backoff] table."""
    return Backoff(
        retry_initial=settings.retry_initial,
        retry_max=settings.retry_max,
        suspend_initial=settings.suspend_initial,
        suspend_max=settings.suspend_max,
        auth_retry=settings.auth_retry,
    )


def server_fingerprint(config: Config, server: ServerConfig, credentials_fp: str) -> str:
    """Changes whenever anything about how or when the server is refreshed changes, its
    login included; a suspension recorded under another fingerprint ends (SPEC: a change
    of the server's or the credentials' config ends it)."""
    parts = (
        # Where it pings is not how it is refreshed: a new ping URL ends no suspension.
        server.model_dump_json(exclude={"ping_url", "ping_url_env"}),
        _blackouts_text(config.blackouts_for(server.name)),
        str(config.daemon.spread),
        config.client.source,
        credentials_fp,
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=256)
def _blackouts_text(blackouts: tuple[WeeklyWindow | AbsoluteWindow, ...]) -> str:
    # A fleet shares a few blackout lists; their repr (datetimes) was half a fingerprint.
    return repr(blackouts)


def logins_of(config: Config, table_fps: Mapping[str, str]) -> Logins:
    """The config's logins, keyed by VICIdial user across every credentials table;
    `table_fps`: each table's password fingerprint."""
    of_table: dict[str, str] = {}
    fingerprints: dict[str, set[str]] = {}
    for name, creds in config.credentials.items():
        key = login_key(creds.user)
        of_table[name] = key
        fingerprints.setdefault(key, set()).add(table_fps[name])
    return Logins(of_table, {key: frozenset(fps) for key, fps in fingerprints.items()})

"""The config read as the core's values: each server's schedule and the back-off policy."""

from __future__ import annotations

from refreshd.config import BackoffConfig, Config, ServerConfig
from refreshd.core.policy import Backoff
from refreshd.core.slots import Schedule, spread_offset

__all__ = ["backoff_of", "schedule_of"]


def schedule_of(config: Config, server: ServerConfig) -> Schedule:
    """A server's timing as the pure window arithmetic wants it."""
    return Schedule(
        name=server.name,
        tz=server.zone,
        windows=server.windows,
        blackouts=config.blackouts_for(server.name),
        every=server.every,
        offset=spread_offset(server.name, config.daemon.spread),
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

"""The store a config names: the `[state]` database (PostgreSQL or MariaDB/MySQL, shared by
several instances), else the SQLite file at daemon.state_path (one daemon per file)."""

from __future__ import annotations

from datetime import timedelta

from refreshd.config import Config
from refreshd.shared.engines import Engine, connect
from refreshd.store.journal import StateStore

__all__ = ["open_store", "shared_engine", "store_name"]

_TIMEOUT = timedelta(seconds=5)
"""The longest a connection or a statement of the shared store waits: a store that does not
answer must not stall a worker for longer than a lease."""


def shared_engine(config: Config) -> Engine | None:
    """An engine for `[state]` (its password read already, see `Config.with_passwords`);
    None without `[state]`."""
    state = config.state
    if state is None:
        return None
    timeout = min(_TIMEOUT, state.lease / 3).total_seconds()
    return connect(state.parsed, state.secret, timeout=timeout)


def open_store(config: Config, *, readonly: bool = False) -> StateStore:
    """The configured store, open (read-only for `status` and `history`). Raises StateError
    naming the file or the database and what to do."""
    engine = shared_engine(config)
    target = config.daemon.state_path if engine is None else engine
    return StateStore.open_readonly(target) if readonly else StateStore(target)


def store_name(config: Config) -> str:
    """The configured store, as messages name it (never a password)."""
    if config.state is None:
        return f"state file {config.daemon.state_path}"
    return f"state database {config.state.parsed}"

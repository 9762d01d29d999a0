"""The VICIdial simulator as tests use it: started on a free loopback port, one path per
server so that its counts tell servers apart, and what it saw."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from refreshd.simulator import API_PATH, SimServer, Simulator, SimUser, load_simulator_config
from tests.support.repo import SIMULATOR_CONFIG


@contextmanager
def running_simulator(
    users: Sequence[SimUser] | None = None,
    servers: Sequence[SimServer] | None = None,
    **options: Any,
) -> Iterator[Simulator]:
    """A started simulator on 127.0.0.1 (the port is its own choice, `sim.url` says which);
    stopped on leaving. Given neither users nor servers, it has config/simulator.toml's;
    given either, the simulator's own defaults stand in for the other."""
    if users is None and servers is None:
        users, servers = load_simulator_config(SIMULATOR_CONFIG)
    with Simulator(host="127.0.0.1", port=0, users=users, servers=servers, **options) as sim:
        yield sim


def api_path(index: int) -> str:
    """Server number `index`'s own path on the simulator, so its calls are counted apart."""
    return f"/s{index}{API_PATH}"


def calls_on(sim: Simulator, path: str) -> list[dict[str, Any]]:
    """Every call the simulator answered on `path`, oldest first."""
    return [call for call in sim.calls() if call["path"] == path]


def total_requests(sim: Simulator) -> int:
    return sum(sim.stats()["requests"].values())

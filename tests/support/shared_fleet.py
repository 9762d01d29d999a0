"""Several refreshd instances sharing one store on the machine's PostgreSQL or MariaDB: a
simulator, a scratch database (reached directly or through a TCP relay the test can cut), one
config per instance, and the checks of "one refresh per run" read from what the simulator
saw and what the daemons logged."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from refreshd.dburl import DatabaseUrl
from refreshd.simulator import Simulator
from tests.support.config import instant, window_from_now, write_daemon_config
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.databases import scratch_database
from tests.support.fleet import MAIN, PASSWORD_ENV, sim_users
from tests.support.proxy import TcpProxy
from tests.support.simulator import api_path, running_simulator


class SharedFleet:
    """`servers` servers (s0000...), each its own path on one simulator, refreshed every
    `every` inside a window open for an hour; instances web-1, web-2... each with its own
    config file naming the shared store and its instance."""

    def __init__(
        self,
        tmp_path: Path,
        sim: Simulator,
        url: DatabaseUrl,
        relay: TcpProxy | None,
        daemons: Daemons,
    ) -> None:
        self.tmp_path, self.sim, self.url, self.relay = tmp_path, sim, url, relay
        self.daemons = daemons
        self.instances: dict[str, DaemonProcess] = {}
        # One window for every instance: their runs fall at the same instants, as they do
        # for instances of one config.
        self.window = window_from_now(-2, 3600)

    def state_url(self) -> str:
        port = self.relay.port if self.relay is not None else self.url.port
        return str(
            DatabaseUrl(self.url.user, self.url.host, port, self.url.database, self.url.engine)
        )

    def write(
        self,
        instance: str,
        *,
        servers: int,
        every: str,
        lease: str,
        label: str | None = None,
        **daemon: Any,
    ) -> Path:
        """`label`: the config's (and its daemon's) own name where two daemons are given
        one `instance` by mistake; the instance's name by default."""
        window = self.window
        label = label or instance
        path = self.tmp_path / f"{label}.toml"
        write_daemon_config(
            path,
            servers=[
                {
                    "name": f"s{index:04d}",
                    "api_url": self.sim.url + api_path(index),
                    "credentials": "main",
                    "windows": [window],
                    "every": every,
                }
                for index in range(servers)
            ],
            credentials=MAIN,
            daemon={
                "state_path": str(self.tmp_path / f"{label}.db"),
                "metrics_listen": "127.0.0.1:0",
                **daemon,
            },
            client={"timeout": "10s"},
            state={"url": self.state_url(), "lease": lease, "instance": instance},
        )
        return path

    def start(self, instance: str, **config: Any) -> DaemonProcess:
        daemon = self.daemons.start(self.write(instance, **config), env=PASSWORD_ENV)
        self.instances[config.get("label") or instance] = daemon
        return daemon

    def refreshed(self) -> dict[str, list[tuple[str, str]]]:
        """Per instance, the (server, due) of each refresh it logged as succeeded."""
        return {
            name: [
                (line["server"], line.get("due", line["slot"]))
                for line in d.matching("refresh.succeeded")
            ]
            for name, d in self.instances.items()
        }

    def calls_per_server(self) -> Counter[str]:
        """The calls the simulator answered, per server name."""
        paths = Counter(call["path"] for call in self.sim.calls())
        return Counter(
            {
                f"s{index:04d}": paths[api_path(index)]
                for index in range(10_000)
                if paths[api_path(index)]
            }
        )


def runs_by_server(refreshed: dict[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
    runs: dict[str, list[str]] = defaultdict(list)
    for pairs in refreshed.values():
        for server, due in pairs:
            runs[server].append(due)
    return runs


def assert_each_run_once(fleet: SharedFleet, every: timedelta, *, in_flight: int = 0) -> int:
    """Every run of every server was refreshed once: no (server, due) logged as succeeded
    twice (`in_flight`: how many calls a kill left unanswered may be called again, at least
    once), the simulator answered as many calls as were logged, and each server's runs follow
    one another `every` apart with none left out. The number of runs."""
    runs = runs_by_server(fleet.refreshed())
    doubles = {
        server: due for server, dues in runs.items() for due, n in Counter(dues).items() if n > 1
    }
    assert len(doubles) <= in_flight, f"runs refreshed twice: {doubles}"
    calls = fleet.calls_per_server()
    logged = Counter({server: len(dues) for server, dues in runs.items()})
    extra = calls - logged
    claims = {
        name: [
            (
                line["event"],
                line["server"],
                line["due"],
                line.get("maybe_called"),
                line.get("reason"),
            )
            for line in daemon.events
            if line["event"] in ("claim.lost", "claim.taken_over", "claim.abandoned")
        ]
        for name, daemon in fleet.instances.items()
    }
    assert sum(extra.values()) <= in_flight, (
        f"calls the daemons did not log as refreshed: {extra}; at most {in_flight} may be "
        f"calls in flight at a kill or a freeze; the claims said: {claims}"
    )
    for server, dues in runs.items():
        instants = sorted({instant(due) for due in dues})
        gaps = [b - a for a, b in itertools.pairwise(instants)]
        assert all(gap == every for gap in gaps), f"{server}: runs left out or doubled: {instants}"
    return sum(len(set(dues)) for dues in runs.values())


@contextmanager
def shared_fleet(tmp_path: Path, engine: str, *, relayed: bool = False) -> Iterator[SharedFleet]:
    with ExitStack() as stack:
        sim = stack.enter_context(running_simulator(users=sim_users()))
        url = stack.enter_context(scratch_database(engine, prefix="refreshd_ha"))
        relay = TcpProxy(url.port) if relayed else None
        if relay is not None:
            stack.callback(relay.close)
        daemons = Daemons()
        stack.callback(daemons.stop_all)
        yield SharedFleet(tmp_path, sim, url, relay, daemons)


def spread(counts: Sequence[int]) -> float:
    """The smallest instance's share of the work."""
    return min(counts) / sum(counts) if sum(counts) else 0.0

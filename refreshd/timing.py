"""One server's place in the daemon's timing (the scheduler's working state, not the ledger's),
the memo of one planning pass, and the entries held for their cluster mates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from refreshd.attempt import Target
from refreshd.config import ServerConfig
from refreshd.core.clusters import CallGroups
from refreshd.core.planning import Next
from refreshd.core.slots import Schedule

__all__ = ["MateHold", "PlanMemo", "Server"]


# (schedule, not before, last done) -> next_fire's answer, for one planning pass only: keyed
# by instants, a longer-lived cache would miss in the steady state and only grow.
PlanMemo = dict[tuple[Schedule, datetime, datetime | None], Next | None]


@dataclass
class Server:
    """One server's place in the timing (mutable; guarded by the scheduler's lock). What it
    has done, its suspension and its login's wait are the runner's ledger, not here."""

    config: ServerConfig
    schedule: Schedule
    target: Target
    login: str  # the ledger key of the VICIdial user it logs in as
    run_next: Next | None = None
    attempts: int = 0  # calls made for run_next.run so far
    generation: int = 0  # bumped whenever it is (re)queued: an older entry or answer is stale
    in_flight: bool = False
    taken: datetime | None = None  # the latest run found done by another instance (its due)
    held: datetime | None = None  # the due of a run last refused here as held elsewhere
    # The due of a run passed by while held elsewhere (held, then superseded): its claim is
    # read once, on the worker of this server's next call (tickets.claim_run).
    abandoned: datetime | None = None
    # Why the current run was not called here where no other instance is known to have it
    # (another holds the login's lease: a command killed mid-login, say): `slot.missed`
    # with this as its outcome if the run passes undone, not silence.
    unserved: str | None = None

    @property
    def name(self) -> str:
        return self.config.name


class MateHold:
    """The entries of one cluster (core/clusters.CallGroups) make one call per run only if
    they fire together. An entry whose next run is due while a mate's call is still out, or
    its answer still being settled (the group's answer is settled entry by entry, and the
    first one settled may already be due again), waits for that mate instead of firing
    alone; both then fire in one wake, as one call. Guarded by the scheduler's lock."""

    def __init__(self, queue: Callable[[Server, datetime], None]) -> None:
        self._queue = queue  # the scheduler's: queue a server to fire at an instant
        self._held: set[str] = set()

    def hold(self, server: Server, servers: Iterable[Server], groups: CallGroups) -> bool:
        """Whether `server`, due now, waits for a mate (it is then kept here)."""
        if _mate_out(server, servers, groups):
            self._held.add(server.name)
            return True
        return False

    def release(self, servers: Mapping[str, Server], groups: CallGroups) -> None:
        """Queue again, for their planned run, the held entries none of whose mates is out
        any more (or that are gone, or whose mate is: forgotten)."""
        gone = {name for name in self._held if name not in servers}
        free = [
            servers[name]
            for name in sorted(self._held - gone)
            if not _mate_out(servers[name], servers.values(), groups)
        ]
        self._held -= gone | {server.name for server in free}
        for server in free:
            if server.run_next is not None:
                self._queue(server, server.run_next.at)


def _mate_out(server: Server, servers: Iterable[Server], groups: CallGroups) -> bool:
    group = groups.group_of(server.name, server.login, server.target.key[2])
    return group is not None and any(
        other.in_flight
        and other is not server
        and groups.group_of(other.name, other.login, other.target.key[2]) == group
        for other in servers
    )

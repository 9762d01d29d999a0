"""One server's place in the daemon's timing (the scheduler's working state, not the ledger's),
the memo of one planning pass, and one cluster's call while its entries settle it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from refreshd.attempt import Target
from refreshd.config import ServerConfig
from refreshd.core.planning import Next
from refreshd.core.slots import Schedule

__all__ = ["Firing", "PlanMemo", "Server", "fired_together", "hold_for_mates", "settled"]


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
    firing: Firing | None = None  # its cluster's last call, while not every entry settled it

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Firing:
    """The entries of one cluster fired as one call (core/clusters.CallGroups). Its answer is
    settled entry by entry, and an entry settled first may already be due again (a
    catch-up, a loaded host): it then waits (`held`) until every entry still `pending` has
    settled, or has been dropped, and they fire together again, as one call, instead of
    each alone. Guarded by the scheduler's lock."""

    pending: set[str]
    held: set[str] = field(default_factory=set)


# What a held entry's run, if it passes undone, is told missed for (`slot.missed`).
WAITING_FOR_MATES = "waiting for its cluster mates to record their shared answer"


def fired_together(servers: list[Server]) -> None:
    """`servers` were fired in one wake as one call: a Firing when they are several. Fired,
    a held one no longer waits: a miss of its run (its claim refused, say) is not for that."""
    firing = Firing({server.name for server in servers}) if len(servers) > 1 else None
    for server in servers:
        server.firing = firing
        if server.unserved == WAITING_FOR_MATES:
            server.unserved = None


def hold_for_mates(server: Server) -> bool:
    """Whether `server`, due now, waits for the mates of its last call to settle it."""
    if server.firing is None or not server.firing.pending:
        return False
    server.firing.held.add(server.name)
    server.unserved = server.unserved or WAITING_FOR_MATES
    return True


def settled(
    name: str, firing: Firing | None, servers: Mapping[str, Server]
) -> list[tuple[Server, datetime]]:
    """`name` has settled its cluster's call (or is gone): once none is pending any more,
    the held entries to queue again, each for its planned run."""
    if firing is None:
        return []
    firing.pending.discard(name)
    if firing.pending:
        return []
    held, firing.held = firing.held, set()
    return [
        (server, server.run_next.at)
        for each in sorted(held)
        if (server := servers.get(each)) is not None
        and server.run_next is not None
        and not server.in_flight
    ]

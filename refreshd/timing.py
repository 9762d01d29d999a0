"""One server's place in the daemon's timing (the scheduler's working state, not the ledger's),
and the memo of one planning pass."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from refreshd.attempt import Target
from refreshd.config import ServerConfig
from refreshd.core.planning import Next
from refreshd.core.slots import Schedule

__all__ = ["PlanMemo", "Server"]


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

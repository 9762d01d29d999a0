"""A scheduled call's ticket: its claim on the run from just before the request to the
result's write (claiming.Claiming keeps the claims alive), why a run is not called here
(`Refused`), and a result refused by fencing (`Fenced`, `FENCED_OUT`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from refreshd.core.policy import Action, Decision
from refreshd.core.vicidial import Attempt
from refreshd.shared.claims import Claim
from refreshd.shared.engines import Tx

if TYPE_CHECKING:
    from refreshd.claiming import Claiming

__all__ = ["FENCED_OUT", "Fenced", "Refused", "Ticket", "claim_run"]


class Refused(enum.StrEnum):
    """Why a run (or a login) is not called here now."""

    DONE = "the run is done (by another instance)"
    HELD = "another instance holds the run"
    LOST = "the claim was lost before the call"
    FENCED = "the result was refused: another instance took the run over"
    LOGIN_HELD = "another instance is trying this login"
    UNAVAILABLE = "the shared store is unavailable"

    @classmethod
    def of(cls, reason: str) -> Refused | None:
        """The refusal a skipped job's reason names, if it is one."""
        return cls._value2member_map_.get(reason)  # type: ignore[return-value]


# What the runner answers for a result refused by fencing (the scheduler reads the ticket).
FENCED_OUT = Decision(Action.GIVE_UP, None, 0, str(Refused.FENCED))


@dataclass
class Ticket:
    """One scheduled call's claim on its run, from before the call to its result."""

    server: str
    due: datetime
    claims: Claiming | None = None
    claim: Claim | None = None
    refused: Refused | None = None
    abandoned: datetime | None = None  # an earlier run passed by while held elsewhere

    committed: bool = False  # the claim's end was written with the journal's write

    # The claim's end commits with the result: `commit` runs inside the journal's
    # transaction (StateStore.journal's `within`), so the history row, the done run and the
    # claim marked done (or given back) are one write. A crash before it leaves the claim
    # `called`: another instance may call the run again (at-least-once, counted), and the
    # journal never misses a result it made. `holds` is only the early, cheap look.

    def holds(self, outcome: object) -> bool:
        """Whether the call's result counts for the run; False: it is refused (another
        instance took the run over), and the ticket says so."""
        if self.claims is None or self.claim is None or self.claims.holds(self.claim):
            return True
        self.refused = Refused.FENCED
        return False

    def commit(self, tx: Tx, decision: Decision) -> None:
        """Inside the journal's transaction: the run marked done, or given back until its
        retry may come (its back-off, the server's suspension, the login's wait bind the
        other instances too). Raises Fenced, undoing the whole write, when another instance
        took the run over since `holds`."""
        if self.claims is None or self.claim is None:
            return
        if not self.claims.finish_in(self.claim, decision, tx):
            self.refused = Refused.FENCED
            raise Fenced(f"{self.server} due {self.due.isoformat()}: {Refused.FENCED}")

    def settled(self, decision: Decision) -> None:
        """After the journal: the claim's end noted once the write committed; when it did
        not (the store failed), given back on its own so that the run is not held."""
        if self.claims is None or self.claim is None:
            return
        if self.committed:
            self.claims.ended(self.claim)
            return
        done = decision.action == Action.DONE
        self.claims.finish(self.claim, "ok" if done else str(decision.action))
        if not done:
            self.claims.give_back(self.claim, decision.at)


class Fenced(Exception):
    """A result refused inside the journal's transaction (Ticket.commit): the write is
    undone, and the result is not the run's."""


def claim_run(ticket: Ticket) -> str | Attempt | None:
    """On the worker, just before a scheduled call: the claim on its run, marked as
    calling (None: go), or why this instance does not call it (the ticket says which), or
    a settled run's answer: its lost call's refresh was taken (`Claiming.lost`), no call."""
    claims = ticket.claims
    assert claims is not None
    if ticket.abandoned is not None:  # read here, once: never under the schedule's lock
        claims.abandoned(ticket.server, ticket.abandoned)
        ticket.abandoned = None
    got = claims.take(ticket.server, ticket.due)
    if isinstance(got, Refused):
        ticket.refused = got
    elif (settled := claims.settle_lost(got)) is not None:
        ticket.claim = got  # finished as done through the runner, as an `ok` would be
        return settled
    elif claims.calling(got):
        ticket.claim = got
        return None
    else:
        ticket.refused = Refused.LOST
    return str(ticket.refused)

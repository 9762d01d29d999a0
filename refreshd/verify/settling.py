"""Settling a call whose answer was lost (a kill -9, a claim taken over): one reading of the
cluster's database says whether VICIdial took a refresh since the call started
(core/verification.lost_call_taken); if so the run is settled as done with no second call,
else it is called again (at-least-once). Read-only, on the worker that would have called."""

from __future__ import annotations

from datetime import datetime

from refreshd.clock import Clock
from refreshd.core.verification import Taken, lost_call_taken
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.logs import utc_text
from refreshd.verify.database import ClusterDatabase, DatabaseProblem

__all__ = ["settle_lost"]

# The first reading's round trip holds the connection's set-up (a TCP and TLS handshake, the
# login): its database clock is known only within half of that, often too wide to place a
# stamp in the call's second. A second reading on the open connection is a query's round
# trip; a stamp that moved between the two readings is still a refresh since the call.
_READINGS = 2


def settle_lost(database: ClusterDatabase, clock: Clock, started: datetime) -> Attempt | str:
    """The settled run's answer (dated at the lost call's start, `started`), or why the
    call is made again."""
    for _ in range(_READINGS):
        asked = clock.now()
        try:
            reading = database.read()
        except DatabaseProblem as problem:
            return f"the database could not be read: {problem}"
        except Exception as error:  # a driver's surprise: call again rather than guess
            return f"{database.url}: cannot read the database ({type(error).__name__})"
        answered = clock.now()
        stamp = reading.reload_timestamp
        taken = lost_call_taken(
            started, stamp, reading.database_now, asked=asked, answered=answered
        )
        if taken is not Taken.UNKNOWN:
            break
    shown = "none" if stamp is None else utc_text(stamp, "seconds")
    if taken is Taken.NO:
        return f"no refresh taken since the call started (reload_timestamp {shown})"
    if taken is Taken.UNKNOWN:
        return f"too close to tell whether reload_timestamp {shown} is since the call's start"
    assert stamp is not None  # YES needs a stamp
    detail = (
        f"VICIdial took a refresh at {shown} (system_settings.reload_timestamp), since the "
        "lost call started: no second call"
    )
    answer = Answer(Outcome.SETTLED, detail, reached=False)
    return Attempt(answer, started, 0, reload_timestamp=stamp)

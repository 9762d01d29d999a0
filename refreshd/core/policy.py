"""The back-off policy: what to do after each call outcome, and when (pure).

Nothing here reads a clock or owns a randomness source: `now` and a `random.Random`
are passed in, so every decision is reproducible in a test. The caller (the
scheduler) does what a `Decision` says and records it in the state store.

Four rules, from SPEC.md "Outcomes and back-off":

- `transient` / `unexpected`: retried inside the slot, exponential back-off with full
  jitter, never at or after the slot's end (`retry_until`).
- `permission_denied`, `ip_blocked`, `not_found`, `bad_request`: the server is
  suspended, `suspend_initial` doubling per consecutive suspension up to
  `suspend_max`.
- `auth_failed`: every server using those credentials waits `auth_retry`.
- `locked_out`: the same, but never less than VICIdial's 15-minute lock plus a margin.

Lock-out safety (VICIDIAL_API.md "Failed logins lock the account": 10 failed logins
within 15 minutes lock the login for everyone, administrators included) rests on two
rules that together bound the failures refreshd can cause in any 15 minutes:

1. after a failed login the credentials wait `auth_retry` (`locked_out`: longer);
2. `credentials_attempt_allowed`: while credentials are not known to be good, only
   one call using them is in flight at a time, and never more than
   `MAX_LOGINS_IN_FLIGHT` even when they are, so a wrong password costs one failed
   login (or a handful, if it changed under calls in flight), not one per server.

Worst case, a password changed under calls in flight: `MAX_LOGINS_IN_FLIGHT` failures
at once, then one per `auth_retry`. For any `auth_retry` of at least
`LOCKOUT_SAFE_AUTH_RETRY` that is at most 4 + 15 min / 5 min + 1 = 8 in any 15 minutes,
below VICIdial's 10 (tests/unit/test_policy.py simulates a week of it). `Backoff` accepts
shorter values, which tests need; config_warnings() warns under 15 minutes.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from refreshd.core.durations import format_duration
from refreshd.core.vicidial import Outcome

__all__ = [
    "BUDGET_REASON",
    "FAILED_LOGIN_LIMIT",
    "LOCKOUT_MARGIN",
    "LOCKOUT_SAFE_AUTH_RETRY",
    "LOCKOUT_WAIT",
    "LOGIN_PROVEN",
    "MAX_LOGINS_IN_FLIGHT",
    "REFUSED_LOGIN",
    "RETRY_FLOOR",
    "SUSPENDING",
    "VICIDIAL_LOCKOUT",
    "WAIT_OF",
    "Action",
    "Backoff",
    "Decision",
    "LoginWait",
    "WaitKind",
    "credentials_attempt_allowed",
    "decide",
    "failed_login_budget_until",
    "login_wait",
    "retry_delay",
    "suspension_length",
]

VICIDIAL_LOCKOUT = timedelta(minutes=15)
"""How long VICIdial locks a login after 10 failed attempts."""

LOCKOUT_MARGIN = timedelta(minutes=2)
"""Slack for clock skew between us and the VICIdial database, and for the lock stamp
being written a little after our failed attempt."""

LOCKOUT_WAIT = VICIDIAL_LOCKOUT + LOCKOUT_MARGIN
"""The shortest credentials wait after a `locked_out` answer."""

RETRY_FLOOR = timedelta(seconds=1)
"""Full jitter can draw (almost) zero; a retry is never sooner than this, so a run of
unlucky draws cannot turn into back-to-back calls against a struggling server. It wins
over a `retry_max` below one second."""

LOCKOUT_SAFE_AUTH_RETRY = timedelta(minutes=5)
"""The shortest `auth_retry` for which the lock-out bound in the module doc holds."""

MAX_LOGINS_IN_FLIGHT = 4
"""Calls in flight at once per credentials that are known to be good."""

SUSPENDING: frozenset[Outcome] = frozenset(
    {
        Outcome.PERMISSION_DENIED,
        Outcome.IP_BLOCKED,
        Outcome.NOT_FOUND,
        Outcome.BAD_REQUEST,
        Outcome.TLS_REJECTED,
        Outcome.PROXY_REFUSED,
    }
)
"""Outcomes that a retry inside the slot cannot fix: the server is suspended."""

LOGIN_PROVEN: frozenset[Outcome] = frozenset({Outcome.OK, Outcome.PERMISSION_DENIED})
"""Outcomes VICIdial only answers after accepting the login, so they prove the
credentials good. Others prove nothing (`not_found` may be an HTTP 404 from a proxy,
`transient` never reached VICIdial) or prove them bad (`auth_failed`, `locked_out`)."""


FAILED_LOGIN_LIMIT = 3
"""Calls per VICIdial user, in any `VICIDIAL_LOCKOUT`, that were or may have been failed
logins: refused ones, and ones that ended without a readable answer (a time-out after
sending, a reset, a garbled body) while their password was unproven. At the limit, no
login as the user until the oldest of them is 15 minutes old, whatever the retry back-off
says and even with --force: a third of VICIdial's 10, for the daemon, the commands and
an operator's own attempts together."""


def failed_login_budget_until(times: tuple[datetime, ...], now: datetime) -> datetime | None:
    """When the failed-login budget frees up again, if it is spent at `now`: `times` are
    the user's (maybe) failed logins, oldest first."""
    recent = [t for t in times if t > now - VICIDIAL_LOCKOUT]
    if len(recent) < FAILED_LOGIN_LIMIT:
        return None
    return recent[-FAILED_LOGIN_LIMIT] + VICIDIAL_LOCKOUT


class WaitKind(enum.StrEnum):
    """Why no login as a user may be tried: each asks the operator for something else."""

    REFUSED_LOGIN = "refused_login"
    """VICIdial said `Login incorrect`: fix the password."""
    LOCKED_OUT = "locked_out"
    """VICIdial locked the user after too many failed logins (from anywhere)."""
    FAILED_LOGIN_BUDGET = "failed_login_budget"
    """`FAILED_LOGIN_LIMIT` calls in 15 minutes were refused or got no readable answer
    (a web server outage does this): a pause that ends by itself."""


WAIT_OF: dict[Outcome, WaitKind] = {
    Outcome.AUTH_FAILED: WaitKind.REFUSED_LOGIN,
    Outcome.LOCKED_OUT: WaitKind.LOCKED_OUT,
}
"""The wait each refusing outcome starts."""

BUDGET_REASON = (
    f"{FAILED_LOGIN_LIMIT} logins as this user in 15 minutes were refused or got no "
    "readable answer (each may have been a failed login; VICIdial locks a user at 10)"
)


@dataclass(frozen=True)
class LoginWait:
    """A wait the login gate applies: until when, of which kind, and why, for a person."""

    until: datetime
    kind: WaitKind
    reason: str


def login_wait(
    wait: LoginWait | None, failed_logins: tuple[datetime, ...], now: datetime
) -> LoginWait | None:
    """The wait that holds a login back at `now`, if any: the longer of its journaled
    `wait` (after a refused login or a lock-out) and a spent failed-login budget. The
    one rule the gate, the metrics and `status` all ask."""
    spent = failed_login_budget_until(failed_logins, now)
    budget = (
        None if spent is None else LoginWait(spent, WaitKind.FAILED_LOGIN_BUDGET, BUDGET_REASON)
    )
    # On a tie the budget is named: it holds even against --force.
    ends = [w for w in (budget, wait) if w is not None and w.until > now]
    return max(ends, key=lambda w: w.until, default=None)


REFUSED_LOGIN: frozenset[Outcome] = frozenset({Outcome.AUTH_FAILED, Outcome.LOCKED_OUT})
"""Outcomes that prove the login bad: it is unproven again, and waits."""


@dataclass(frozen=True)
class Backoff:
    """The `[backoff]` settings as plain durations. The config validates them (positive,
    each initial no longer than its max), in one place, with the place in the file."""

    retry_initial: timedelta = timedelta(seconds=30)
    retry_max: timedelta = timedelta(minutes=10)
    suspend_initial: timedelta = timedelta(hours=1)
    suspend_max: timedelta = timedelta(hours=24)
    auth_retry: timedelta = timedelta(hours=6)


class Action(enum.StrEnum):
    """What the scheduler does next with the server (and, for credentials, its peers)."""

    DONE = "done"
    """The slot succeeded: record it, plan the next one."""
    RETRY = "retry"
    """Call again at `Decision.at`, inside the same slot."""
    SUSPEND_SERVER = "suspend_server"
    """No calls to this server until `Decision.at`."""
    WAIT_CREDENTIALS = "wait_credentials"
    """No calls with these credentials, from any server, until `Decision.at`."""
    GIVE_UP = "give_up"
    """The slot is missed: no retry fits before its end (`slot.missed`)."""


@dataclass(frozen=True)
class Decision:
    """The policy's answer to one call outcome."""

    action: Action
    at: datetime | None
    """retry at / suspended until / credentials wait until; None for DONE and GIVE_UP."""
    suspensions: int
    """The server's consecutive suspension count after this decision (0 after `ok`)."""
    reason: str
    """Short human text for logs; never contains a secret."""


def retry_delay(attempt: int, backoff: Backoff, rng: random.Random) -> timedelta:
    """The wait before retry number `attempt` (1 = the first retry) of a slot.

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): uniform
    over [0, min(retry_max, retry_initial * 2**(attempt-1))], so servers that failed
    together do not retry together; floored at `RETRY_FLOOR`.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    cap = _doubled(backoff.retry_initial, attempt - 1, backoff.retry_max)
    jittered = timedelta(seconds=rng.uniform(0.0, cap.total_seconds()))
    return max(RETRY_FLOOR, jittered)


def suspension_length(suspensions: int, backoff: Backoff) -> timedelta:
    """How long a suspension lasts, given the server's suspensions before it (0 = first)."""
    if suspensions < 0:
        raise ValueError(f"suspensions must be 0 or more, got {suspensions}")
    return _doubled(backoff.suspend_initial, suspensions, backoff.suspend_max)


def decide(
    outcome: Outcome,
    *,
    attempt: int,
    now: datetime,
    retry_until: datetime,
    suspensions: int,
    backoff: Backoff,
    rng: random.Random,
) -> Decision:
    """The next action after a call that ended in `outcome`.

    `attempt` is the call that just ended (1 = the slot's first call), so the retry it
    may lead to is retry number `attempt`. `retry_until` is the first instant no call
    of this slot may start at: the slot's end or the next slot's start, whichever is
    first (the caller knows the windows; the policy does not). `suspensions` is the
    server's consecutive suspension count before this outcome.
    """
    if outcome in (Outcome.OK, Outcome.SETTLED):  # SETTLED: a lost call's refresh taken
        return Decision(Action.DONE, None, 0, "refreshed")

    if outcome in (Outcome.TRANSIENT, Outcome.UNEXPECTED):
        retry_at = now + retry_delay(attempt, backoff, rng)
        if retry_at < retry_until:
            return Decision(Action.RETRY, retry_at, suspensions, f"{outcome}: retrying")
        return Decision(
            Action.GIVE_UP, None, suspensions, f"{outcome}: no retry fits before the slot ends"
        )

    if outcome in SUSPENDING:
        length = suspension_length(suspensions, backoff)
        return Decision(
            Action.SUSPEND_SERVER,
            now + length,
            suspensions + 1,
            f"{outcome}: server suspended for {format_duration(length)}",
        )

    if outcome is Outcome.AUTH_FAILED:
        return Decision(
            Action.WAIT_CREDENTIALS,
            now + backoff.auth_retry,
            suspensions,
            f"login refused: credentials wait {format_duration(backoff.auth_retry)} (auth_retry)",
        )

    if outcome is Outcome.LOCKED_OUT:
        # A lock-out answer is itself a refused login, so the auth_failed rule (one
        # login per auth_retry) holds too; and a try before the lock expires only
        # earns another lock-out answer. Hence the longer of the two, not their sum:
        # the sum would keep a fixed password idle for an extra auth_retry.
        wait = max(LOCKOUT_WAIT, backoff.auth_retry)
        return Decision(
            Action.WAIT_CREDENTIALS,
            now + wait,
            suspensions,
            f"login locked by VICIdial (too many failed logins): credentials wait "
            f"{format_duration(wait)}",
        )

    raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover


def credentials_attempt_allowed(
    *, wait_until: datetime | None, logins_in_flight: int, proven: bool, now: datetime
) -> bool:
    """May one more call using these credentials start now?

    - Never before a credentials wait ends (`wait_until`, from the state store).
    - Credentials not `proven` (no `LOGIN_PROVEN` outcome since the daemon started,
      the config changed or a login failed): one call at a time, so a wrong password
      costs one failed login, not one per server sharing it.
    - Proven credentials: up to `MAX_LOGINS_IN_FLIGHT` at once, which bounds the
      failures when the password changes under calls already in flight.

    With `decide`'s waits this makes "at most one failed login per credentials per
    auth_retry, after at most one burst" an invariant (tests/unit/test_policy.py simulates it).
    """
    if wait_until is not None and now < wait_until:
        return False
    limit = MAX_LOGINS_IN_FLIGHT if proven else 1
    return logins_in_flight < limit


def _doubled(initial: timedelta, doublings: int, cap: timedelta) -> timedelta:
    """initial * 2**doublings, capped; exact, and no overflow for any count."""
    one = timedelta(microseconds=1)
    initial_us, cap_us = initial // one, cap // one
    if doublings >= cap_us.bit_length():  # already past any cap: skip the huge shift
        return cap
    return min(cap, one * (initial_us << doublings))

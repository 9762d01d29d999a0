"""After a call: the policy's decision, then the state row, the log line and the metrics."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from refreshd.attempt import Attempt
from refreshd.core.policy import SUSPENDING, Action, Backoff, Decision, decide
from refreshd.core.slots import Slot
from refreshd.core.vicidial import Outcome
from refreshd.dispatch import CredentialsGate
from refreshd.metrics import Metrics
from refreshd.state import ServerState, StateError, StateStore

__all__ = ["CallContext", "Recorder"]


@dataclass(frozen=True)
class CallContext:
    """Where a call belongs: which server, slot and run, and which attempt of it."""

    server: str
    credentials: str
    attempt: int = 1
    slot: Slot | None = None  # None: a manual `refreshd refresh`
    due: datetime | None = None
    retry_until: datetime | None = None  # None: no retry (manual)
    credentials_fingerprint: str | None = None

    @property
    def manual(self) -> bool:
        return self.slot is None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Recorder:
    """Acts on each call's outcome, in the order SPEC.md promises: decide, make the state
    durable, then log and count. Thread-safe: called from the dispatcher's workers."""

    def __init__(
        self,
        *,
        store: StateStore | None,
        gate: CredentialsGate,
        backoff: Backoff,
        log: Any,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.store = store
        self.gate = gate
        self.backoff = backoff
        self.log = log
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._now = now

    def record(self, ctx: CallContext, attempt: Attempt) -> Decision:
        answer = attempt.answer
        before = self._server_state(ctx.server)
        with self._rng_lock:
            decision = decide(
                answer.outcome,
                attempt=ctx.attempt,
                now=self._now(),
                retry_until=ctx.retry_until or attempt.started_at,
                suspensions=before.suspensions if before else 0,
                backoff=self.backoff,
                rng=self._rng,
            )
        self._persist(ctx, attempt, decision)
        # The store clears a suspension only on success, so this is "was suspended, however
        # long ago it ran out": the first success after it is the resumption.
        was_suspended = before is not None and before.suspended_until is not None
        self._log(ctx, attempt, decision, was_suspended=was_suspended)
        self._count(ctx, attempt, decision)
        return decision

    def _server_state(self, server: str) -> ServerState | None:
        if self.store is None:
            return None
        try:
            return self.store.server_state(server)
        except StateError as err:
            self.log.error("state.error", server=server, error=str(err))
            return None

    def _persist(self, ctx: CallContext, attempt: Attempt, decision: Decision) -> None:
        answer = attempt.answer
        if decision.action is Action.WAIT_CREDENTIALS and decision.at is not None:
            # In memory first: the very next call with these credentials must see it.
            self.gate.wait(ctx.credentials, decision.at)
        elif answer.outcome is Outcome.OK:
            self.gate.clear_wait(ctx.credentials)
        if self.store is None:
            return
        try:
            self.store.record_call(
                server=ctx.server,
                slot_start=ctx.slot.start if ctx.slot else None,
                due=ctx.due,
                attempt=ctx.attempt,
                outcome=answer.outcome,
                at=attempt.started_at,
                duration_ms=attempt.duration_ms,
                http_status=answer.http_status,
                servers_flagged=answer.servers_flagged,
                detail=answer.detail,
                credentials=ctx.credentials,
            )
            if decision.action is Action.SUSPEND_SERVER and decision.at is not None:
                self.store.suspend_server(
                    ctx.server, decision.at, decision.suspensions, decision.reason
                )
            elif decision.action is Action.WAIT_CREDENTIALS and decision.at is not None:
                self.store.wait_credentials(
                    ctx.credentials, decision.at, decision.reason, ctx.credentials_fingerprint
                )
        except StateError as err:
            # The call happened; only its record failed. Say so loudly: after a restart
            # this run could be refreshed again.
            self.log.error(
                "state.error", server=ctx.server, outcome=str(answer.outcome), error=str(err)
            )

    def _log(
        self, ctx: CallContext, attempt: Attempt, decision: Decision, *, was_suspended: bool
    ) -> None:
        answer = attempt.answer
        fields: dict[str, Any] = {
            "server": ctx.server,
            "outcome": str(answer.outcome),
            "attempt": ctx.attempt,
            "duration_ms": attempt.duration_ms,
            "trigger": "manual" if ctx.manual else "schedule",
        }
        if ctx.slot is not None:
            fields["slot"] = ctx.slot.start
        if ctx.due is not None and ctx.slot is not None and ctx.due != ctx.slot.start:
            fields["due"] = ctx.due
        if answer.servers_flagged is not None:
            fields["servers_flagged"] = answer.servers_flagged
        if answer.http_status is not None:
            fields["http_status"] = answer.http_status
        if answer.outcome is Outcome.OK:
            self.log.info("refresh.succeeded", **fields)
            if was_suspended:
                self.log.info("server.resumed", server=ctx.server, reason="refresh succeeded")
            return
        fields["detail"] = answer.detail
        if answer.outcome is Outcome.BAD_REQUEST:
            fields["config_error"] = (
                "VICIdial refused the request itself: check [client].source and the "
                "server's api_url"
            )
        if decision.action is Action.RETRY and not ctx.manual:
            self.log.warning("refresh.retrying", retry_at=decision.at, **fields)
            return
        reason = decision.reason
        if ctx.manual and decision.action is Action.GIVE_UP:
            reason = f"{answer.outcome}: a manual refresh makes one attempt"
        self.log.error("refresh.failed", reason=reason, **fields)
        if decision.action is Action.SUSPEND_SERVER:
            self.log.warning(
                "server.suspended",
                server=ctx.server,
                outcome=str(answer.outcome),
                suspended_until=decision.at,
                suspensions=decision.suspensions,
                reason=decision.reason,
            )
        elif decision.action is Action.WAIT_CREDENTIALS:
            self.log.warning(
                "credentials.suspended",
                credentials=ctx.credentials,
                server=ctx.server,
                outcome=str(answer.outcome),
                suspended_until=decision.at,
                reason=decision.reason,
            )

    def _count(self, ctx: CallContext, attempt: Attempt, decision: Decision) -> None:
        if self.metrics is None:
            return
        m = self.metrics
        outcome = attempt.answer.outcome
        m.refresh_total.labels(ctx.server, str(outcome)).inc()
        m.refresh_duration.observe(attempt.duration_ms / 1000)
        if outcome is Outcome.OK:
            m.last_success.labels(ctx.server).set(attempt.started_at.timestamp())
            m.suspended.labels(ctx.server).set(0)
            m.credentials_waiting.labels(ctx.credentials).set(0)
        elif outcome in SUSPENDING:
            m.suspended.labels(ctx.server).set(1)
        elif decision.action is Action.WAIT_CREDENTIALS:
            m.credentials_waiting.labels(ctx.credentials).set(1)

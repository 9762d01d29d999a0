"""Claims: before a call for a run (a server and a due instant), an instance claims it. A unique
key decides the race; the claim lives for a lease measured by the database's clock and carries
a fencing number that grows with every takeover, and a result is written only while the number
is still the one in the row. So a run is called by one instance, and an instance that stalled
past its lease can neither start a call on the lost claim nor record a late result."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from refreshd.shared.engines import Engine, Tx
from refreshd.store.rows import text

TABLE = "refreshd_claims"
SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    server VARCHAR(200) NOT NULL,
    due VARCHAR(40) NOT NULL,
    instance VARCHAR(200) NOT NULL,
    fence BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    state VARCHAR(10) NOT NULL,
    outcome VARCHAR(40),
    called_at BIGINT,
    PRIMARY KEY (server, due)
)"""
# Added after the table first shipped: when the run's last call was marked `called`, by the
# database's clock (ms), so that a takeover or a retry knows when a call whose answer was
# lost (or failed) started, and can ask the cluster's database whether it was taken since.
_CALLED_AT = f"ALTER TABLE {TABLE} ADD COLUMN called_at BIGINT"
# A login's shared lease is a claim too, on this pseudo-server: never a run.
LOGIN_PREFIX = "login/"
# A claim's life: claimed (nothing sent yet) -> called (the request may be out) -> done.
CLAIMED, CALLED, DONE = "claimed", "called", "done"
_COLUMNS = ("server", "due", "instance", "fence", "lease_until", "state")
_MINE = "server = %s AND due = %s AND instance = %s AND fence = %s"


@dataclass(frozen=True)
class Claim:
    """The right to call for one run, while `fence` is the row's."""

    server: str
    due: datetime
    instance: str
    fence: int
    taken_over_from: str | None = None  # an instance whose lease ran out
    maybe_called: bool = False  # that instance had marked the call as sent: at-least-once
    called_at: datetime | None = None
    """When the run's last call went out (by whichever instance; on this one's clock): a
    call whose answer was lost (a takeover from `called`) or that earned a retry (a time-out
    among them). None: the run was never called."""

    def key(self) -> tuple[str, str, str, int]:
        return (self.server, text(self.due), self.instance, self.fence)


class ClaimStore:
    """One instance's view of the claims in a shared database."""

    def __init__(self, engine: Engine, instance: str, lease: timedelta) -> None:
        self.engine = engine
        self.instance = instance
        self._lease_ms = int(lease.total_seconds() * 1000)

    def create(self) -> None:
        with self.engine.transaction() as tx:
            tx.execute(SCHEMA)
        if not self._has_called_at():
            try:
                with self.engine.transaction() as tx:
                    tx.execute(_CALLED_AT)
            except self.engine.driver_errors():
                # Another instance added it meanwhile; if not, say this one's error.
                if not self._has_called_at():
                    raise

    def _has_called_at(self) -> bool:
        """Whether the table has `called_at` (a table made by an older refreshd has not):
        asked by selecting it, the one way every engine answers alike."""
        try:
            with self.engine.transaction(write=False) as tx:
                tx.execute(f"SELECT called_at FROM {TABLE} WHERE 1 = 0")
                tx.fetchall()
        except self.engine.driver_errors():
            return False
        return True

    def claim(self, server: str, due: datetime, local_now: datetime | None = None) -> Claim | None:
        """The claim on this run, or None: done already, or held by a live lease.
        `local_now`: this instance's clock as the transaction began; the run's last call is
        then dated on it (its age by the database's clock), whatever the clocks' skew."""
        with self.engine.transaction() as tx:
            now = self.engine.now_ms(tx)
            until = now + self._lease_ms
            row = (server, text(due), self.instance, 1, until, CLAIMED)
            if tx.execute(self.engine.insert_ignore(TABLE, _COLUMNS), row) == 1:
                return Claim(server, due, self.instance, 1)
            tx.execute(
                f"SELECT instance, fence, lease_until, state, called_at FROM {TABLE} "
                f"WHERE server = %s AND due = %s{self.engine.for_update()}",
                (server, text(due)),
            )
            found = tx.fetchone()
            assert found is not None  # the insert found the key: the row exists
            holder, fence, lease_until, state = (
                str(found[0]),
                int(found[1]),
                int(found[2]),
                found[3],
            )
            called_at = None
            if found[4] is not None and local_now is not None:
                called_at = local_now - timedelta(milliseconds=now - int(found[4]))
            if state == DONE or (lease_until > now and holder != self.instance):
                return None
            tx.execute(
                f"UPDATE {TABLE} SET instance = %s, fence = %s, lease_until = %s "
                "WHERE server = %s AND due = %s",
                (self.instance, fence + 1, until, server, text(due)),
            )
            return Claim(
                server,
                due,
                self.instance,
                fence + 1,
                taken_over_from=holder if holder != self.instance else None,
                maybe_called=state == CALLED,
                called_at=called_at,
            )

    def calling(self, claim: Claim) -> bool:
        """Just before the request goes out: True while the claim holds (and from now on a
        takeover knows the call may have been sent); False: the claim is lost, do not call."""
        with self.engine.transaction() as tx:
            now = self.engine.now_ms(tx)
            # A claim taken over from a `called` one is `called` already.
            if not self._live(tx, claim, now):
                return False
            tx.execute(
                f"UPDATE {TABLE} SET state = %s, called_at = %s WHERE {_MINE}",
                (CALLED, now, *claim.key()),
            )
            return True

    def renew(self, claims: Iterable[Claim]) -> list[Claim]:
        """Extend each claim's lease; the ones still held. An instance that cannot renew
        (an error here) must start no call on any of them."""
        held = []
        with self.engine.transaction() as tx:
            now = self.engine.now_ms(tx)
            for claim in claims:
                # A renewal in the claim's (or the last renewal's) millisecond changes no
                # value: by its row count it would be dropped as lost.
                if not self._live(tx, claim, now):
                    continue
                tx.execute(
                    f"UPDATE {TABLE} SET lease_until = %s WHERE {_MINE}",
                    (now + self._lease_ms, *claim.key()),
                )
                held.append(claim)
        return held

    def _live(self, tx: Tx, claim: Claim, now: int) -> bool:
        """Whether `claim` is still this instance's with its lease running at `now`, its row
        locked until `tx` ends. Asked by a locking read, never by an UPDATE's row count:
        MariaDB counts only the rows whose values change."""
        tx.execute(
            f"SELECT state FROM {TABLE} WHERE {_MINE} AND lease_until > %s"
            f"{self.engine.for_update()}",
            (*claim.key(), now),
        )
        return tx.fetchone() is not None

    def finish(self, claim: Claim, outcome: str, tx: Tx | None = None) -> bool:
        """Record the run's result: True when the fencing number still holds (the result
        counts), False when another instance took the run over (the result is refused).
        Given `tx`, inside that transaction, so the journal and the claim commit together."""
        if tx is None:
            with self.engine.transaction() as own:
                return self.finish(claim, outcome, own)
        if not self.holding(claim, tx):  # a locking read: see `_live`
            return False
        tx.execute(
            f"UPDATE {TABLE} SET state = %s, outcome = %s WHERE {_MINE}",
            (DONE if outcome == "ok" else CLAIMED, outcome, *claim.key()),
        )
        return True

    def holding(self, claim: Claim, tx: Tx | None = None) -> bool:
        """Whether the fencing number is still the row's and the run not done: a result
        may be recorded (`finish` then marks it)."""
        if tx is None:
            with self.engine.transaction() as own:
                return self.holding(claim, own)
        tx.execute(
            f"SELECT state FROM {TABLE} WHERE {_MINE} AND state <> %s{self.engine.for_update()}",
            (*claim.key(), DONE),
        )
        return tx.fetchone() is not None

    def release(
        self,
        claim: Claim,
        until: datetime | None = None,
        tx: Tx | None = None,
        local_now: datetime | None = None,
    ) -> None:
        """Give the run back (no call was made, or the result was not `ok` and a retry may
        come from anyone): its lease ends now, or at `until`, when the retry may come (a
        back-off, a suspension or a login's wait binds the other instances too; this one
        may claim it again before). `until` is on this instance's clock, `local_now` its
        now: the lease ends as far ahead by the database's, whatever the clocks' skew.
        Given `tx`, inside that transaction."""
        if tx is None:
            with self.engine.transaction() as own:
                self.release(claim, until, own, local_now)
            return
        ends = 0
        if until is not None:
            ahead = until - (local_now or until)
            ends = self.engine.now_ms(tx) + max(0, int(ahead.total_seconds() * 1000))
        tx.execute(
            f"UPDATE {TABLE} SET lease_until = %s WHERE {_MINE} AND state <> %s",
            (ends, *claim.key(), DONE),
        )

    def prune(self, before: datetime) -> int:
        """Forget the claims of runs due before `before` (the history's retention: those
        runs are long over); how many."""
        with self.engine.transaction() as tx:
            return tx.execute(
                f"DELETE FROM {TABLE} WHERE due < %s AND server NOT LIKE %s",
                (text(before), LOGIN_PREFIX + "%"),
            )

    def live_on(self, server: str) -> list[tuple[str, str]]:
        """(instance, state) of each live claim on `server`'s runs, whatever their due (or
        on a login's lease, `LOGIN_PREFIX` + login): who holds them now, and whether the
        call may be out (`called`)."""
        with self.engine.transaction(write=False) as tx:
            now = self.engine.now_ms(tx)
            tx.execute(
                f"SELECT instance, state FROM {TABLE} "
                "WHERE server = %s AND lease_until > %s AND state <> %s ORDER BY instance",
                (server, now, DONE),
            )
            return [(str(row[0]), str(row[1])) for row in tx.fetchall()]

    def state(self, server: str, due: datetime) -> tuple[str, str, int] | None:
        """(state, instance, fence) of a run's claim, None when nobody claimed it."""
        with self.engine.transaction() as tx:
            tx.execute(
                f"SELECT state, instance, fence FROM {TABLE} WHERE server = %s AND due = %s",
                (server, text(due)),
            )
            row = tx.fetchone()
        return None if row is None else (str(row[0]), str(row[1]), int(row[2]))

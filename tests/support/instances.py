"""Several refreshd instances in one test: each a `Loop` (its own scheduler, runner, ledger
and state file, or one state file they share), with claims on one shared engine (a SQLite
file, or the machine's PostgreSQL or MariaDB), stepped together on one FakeClock, one
simulated VICIdial answering them all."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from refreshd.claiming import Claiming
from refreshd.clock import Clock, FakeClock
from refreshd.config import Config
from refreshd.events import Events
from refreshd.metrics import Metrics
from refreshd.shared import Claim, Engine, Tx, connect, sqlite_engine
from refreshd.simulator.rules import Vicidial
from refreshd.tickets import Refused
from tests.support.databases import scratch_database
from tests.support.loop import MAX_STEPS, Log, Loop, users

ENGINES = ["sqlite", "postgresql", "mysql"]


class Instances:
    """`count` instances web-0, web-1, ... of one config, renewing every `renew_every`
    (a third of a lease). `stalled`: names not stepped, not renewing (a SIGSTOPped
    process)."""

    def __init__(
        self,
        config: Config,
        tmp_path: Path,
        *,
        count: int,
        start: datetime,
        engine: Callable[[FakeClock], Engine],
        lease: timedelta,
        vicidial: Vicidial | None = None,
        shared_state: bool = True,
        renew_every: timedelta | None = None,
        seed: int | None = None,
    ) -> None:
        self.clock = FakeClock(start)
        self.vicidial = vicidial if vicidial is not None else Vicidial(users())
        self.lease = lease
        self.renew_every = renew_every or lease / 3
        self.stalled: set[str] = set()
        self.engines: list[Engine] = []
        self.loops: dict[str, Loop] = {}
        self._rng = random.Random(13)
        sim_lock = threading.Lock()  # the simulated VICIdial answers one request at a time
        for n in range(count):
            name = f"web-{n}"
            made = engine(self.clock)
            self.engines.append(made)
            # On a shared database the journal lives there too (as [state] makes it): a
            # claim's end commits inside the journal's transaction, so both are one store.
            state: Path | Engine = tmp_path / ("state.db" if shared_state else f"state-{n}.db")
            if made.kind != "sqlite":
                state = engine(self.clock)
                self.engines.append(state)
            loop = Loop(
                config,
                state,
                self.clock,
                self.vicidial,
                rng=None if seed is None else random.Random(seed),
                claims=self._claims_of(name, made),
            )
            loop._lock = sim_lock
            self.loops[name] = loop
        self._renew_at = start

    def _claims_of(self, name: str, engine: Engine) -> Callable[[Events], Claiming]:
        def make(events: Events) -> Claiming:
            return Claiming(engine, name, self.lease, clock=self.clock, events=events)

        return make

    def claims(self, name: str) -> Claiming:
        claims = self.loops[name].runner.claims
        assert claims is not None
        return claims

    def dies_calling(self, name: str, server: str, due: datetime) -> Claim:
        """`name` claims `server`'s run due at `due`, marks its call sent, then stalls (dies,
        or freezes): its claim is left `called`, its lease running out."""
        holder = self.claims(name)
        claim = holder.take(server, due)
        assert not isinstance(claim, Refused)
        assert holder.calling(claim)
        self.stalled.add(name)
        return claim

    def running(self) -> list[Loop]:
        return [loop for name, loop in self.loops.items() if name not in self.stalled]

    def run_until(self, end: datetime) -> None:
        """Step every instance not stalled as their timing engines would, in a random
        order at each instant (the race), renewing their claims every third of a lease."""
        for _ in range(MAX_STEPS):
            for loop in self.running():
                assert loop.scheduler.dispatcher.wait_idle(10), "calls still in flight"
            wakes = [w for loop in self.running() if (w := loop.scheduler.next_wake())]
            at = min([*wakes, self._renew_at])
            if at > end:
                self.clock.set(max(end, self.clock.now()))
                return
            if at > self.clock.now():
                self.clock.set(at)
            if at >= self._renew_at:
                for name in self.loops:
                    if name not in self.stalled:
                        self.claims(name).renew()
                self._renew_at = at + self.renew_every
            due = [loop for loop in self.running() if (w := loop.scheduler.next_wake()) and w <= at]
            self._rng.shuffle(due)
            for loop in due:
                loop.scheduler.run_due()
        raise AssertionError(f"the instances took over {MAX_STEPS} steps: stuck?")

    def run_for(self, span: timedelta) -> None:
        self.run_until(self.clock.now() + span)

    def calls_per_run(self) -> Counter[tuple[str | None, datetime]]:
        """How many requests reached VICIdial for each (server_ip, instant)."""
        return Counter(
            (call.server_ip, call.at) for loop in self.loops.values() for call in loop.calls
        )

    def close(self) -> None:
        for loop in self.loops.values():
            loop.close()
        for engine in self.engines:
            engine.close()


class One:
    """One instance's claims with its log and metrics."""

    def __init__(self, engine: Engine, name: str, clock: Clock, lease: timedelta) -> None:
        self.log, self.metrics = Log(), Metrics()
        self.events = Events(self.log, self.metrics, clock)
        self.claims = Claiming(engine, name, lease, clock=clock, events=self.events)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@contextmanager
def claims_engine(kind: str, tmp_path: Path) -> Iterator[Callable[[FakeClock], Engine]]:
    """Makes engines on one shared claims database: the state file (SQLite, leases by the
    fake clock) or a scratch PostgreSQL/MariaDB database (leases by its own clock)."""
    if kind == "sqlite":
        yield lambda clock: sqlite_engine(tmp_path / "state.db", clock)
        return
    with scratch_database(kind) as url:
        yield lambda clock: connect(url, None)


class Breakable(Engine):
    """An engine whose every transaction fails while `broken` (the database unreachable),
    else that of `engine`; `tries` counts the transactions asked for."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.kind = engine.kind
        self.broken = False
        self.tries = 0

    @contextmanager
    def transaction(self, *, write: bool = True, patience: float | None = None) -> Iterator[Tx]:
        self.tries += 1
        if self.broken:
            raise sqlite3.OperationalError("unable to open database file (cut by the test)")
        with self.engine.transaction(write=write, patience=patience) as tx:
            yield tx

    def now_ms(self, tx: Tx) -> int:
        return self.engine.now_ms(tx)

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        return self.engine.insert_ignore(table, columns)

    def for_update(self) -> str:
        return self.engine.for_update()

    def close(self) -> None:
        self.engine.close()

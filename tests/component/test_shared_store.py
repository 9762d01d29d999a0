"""One store, several processes: two StateStores on one database (PostgreSQL, MariaDB, and a
SQLite file as the manual `refresh` beside a daemon) see each other's journal through
`Runner.sync` and `core/merge`; a server database's schema, its refusals, an outage and the
reconnection after it; `journal(within=...)` in the journal's own transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refreshd.clock import FakeClock
from refreshd.config import Config, validate_config
from refreshd.core.ledger import LoginEntry, ServerEntry
from refreshd.core.slots import Slot
from refreshd.core.vicidial import Answer, Attempt, Outcome
from refreshd.dburl import DatabaseUrl
from refreshd.runner import Runner, runner_for
from refreshd.shared.engines import Tx, connect
from refreshd.store import SCHEMA_VERSION, NewCall, StateError, StateStore
from refreshd.store.opening import open_store, store_name
from tests.support.databases import scratch_database
from tests.support.proxy import TcpProxy
from tests.support.stores import ENGINES, Place, place
from tests.support.waiting import all_at_once

SLOT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
SERVERS = ("east-1", "east-2")  # one login: u_east
SERVER_ENGINES = ["postgresql", "mysql"]


def config(state: dict[str, object] | None = None, path: Path = Path("state.db")) -> Config:
    data: dict[str, object] = {
        "daemon": {"state_path": str(path), "metrics_listen": ""},
        "credentials": {"east": {"user": "u_east", "password": "p-east-1234"}},
        "servers": [
            {
                "name": name,
                "api_url": "http://127.0.0.1:9/vicidial/non_agent_api.php",
                "credentials": "east",
                "windows": ["02:00-04:00"],
            }
            for name in SERVERS
        ],
    }
    if state is not None:
        data["state"] = state
    return validate_config(data, environ={})


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def __getattr__(self, level: str) -> object:
        return lambda event, **fields: self.lines.append((event, fields))


def settle(runner: Runner, server: str, outcome: Outcome, at: datetime, due: datetime) -> None:
    call = runner.call_for(runner.config.server(server), slot=Slot(SLOT, SLOT + 120 * MIN), due=due)
    body = "SUCCESS: server_refresh |3" if outcome is Outcome.OK else "ERROR: Login incorrect"
    runner.settle(call, Attempt(Answer(outcome, body), at, 120))


@pytest.fixture(params=ENGINES)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    with place(request.param, tmp_path) as found:
        yield found


def test_two_instances_see_each_others_journal_through_sync(shared: Place) -> None:
    clock = FakeClock(SLOT + 6 * MIN)
    one, other = shared.open(), shared.open()
    first = runner_for(config(), store=one, clock=clock, log=Log())
    second = runner_for(config(), store=other, clock=clock, log=Log())
    assert second.sync() is None  # nothing new: the counter has not moved

    settle(first, "east-1", Outcome.OK, SLOT + 6 * MIN, due=SLOT + 5 * MIN)
    settle(first, "east-2", Outcome.AUTH_FAILED, SLOT + 7 * MIN, due=SLOT + 5 * MIN)
    assert first.sync() is None  # its own writes

    merged = second.sync()
    assert merged is not None
    east1, login = second.ledger.server("east-1"), second.ledger.login("u_east")
    assert east1.last_done == SLOT + 5 * MIN
    assert east1.last_success_at == SLOT + 6 * MIN
    assert login.failed_logins == (SLOT + 7 * MIN,)  # the budget is spent for both
    assert login.wait_until == first.ledger.login("u_east").wait_until is not None
    assert [c.server for c in other.history()] == ["east-2", "east-1"]
    assert second.sync() is None  # taken in once


def test_a_failed_login_is_never_erased_by_another_instances_write(shared: Place) -> None:
    """Each instance journals its own list of failed logins; the store keeps the union, so
    ten instances still spend one budget (the previous issue's promise)."""
    clock = FakeClock(SLOT)
    runners = [runner_for(config(), store=shared.open(), clock=clock, log=Log()) for _ in range(2)]
    for n, runner in enumerate(runners):  # neither syncs before its own failure
        at = SLOT + (n + 1) * MIN
        settle(runner, SERVERS[n], Outcome.AUTH_FAILED, at, due=SLOT)
    with shared.open() as third:
        spent = third.load().login("u_east").failed_logins
    assert spent == (SLOT + MIN, SLOT + 2 * MIN)


def test_a_success_forgets_the_failed_logins_before_it_not_after(shared: Place) -> None:
    clock = FakeClock(SLOT)
    first = runner_for(config(), store=shared.open(), clock=clock, log=Log())
    second = runner_for(config(), store=shared.open(), clock=clock, log=Log())
    settle(first, "east-1", Outcome.AUTH_FAILED, SLOT + MIN, due=SLOT)
    settle(second, "east-2", Outcome.AUTH_FAILED, SLOT + 3 * MIN, due=SLOT)
    settle(first, "east-1", Outcome.OK, SLOT + 2 * MIN, due=SLOT + MIN)
    with shared.open() as third:
        assert third.load().login("u_east").failed_logins == (SLOT + 3 * MIN,)


def test_what_within_writes_commits_with_the_journal_or_not_at_all(shared: Place) -> None:
    store = shared.open()
    call = NewCall("east-1", SLOT, SLOT, 1, Outcome.OK, SLOT, 100)
    servers = {"east-1": ServerEntry(last_outcome=Outcome.OK)}

    def refuse(tx: Tx) -> None:
        tx.execute("UPDATE daemon SET heartbeat_at = heartbeat_at")  # a statement, then no
        raise LookupError("the claim was lost")

    with pytest.raises(LookupError):
        store.journal(servers=servers, logins={}, call=call, done=("east-1", SLOT), within=refuse)
    assert store.history() == []
    assert store.last_runs_done() == {}

    seen: list[int] = []

    def count(tx: Tx) -> None:
        tx.execute("SELECT COUNT(*) FROM calls")
        row = tx.fetchone()
        seen.append(-1 if row is None else int(row[0]))

    store.journal(servers=servers, logins={}, call=call, within=count)
    assert seen == [0]
    assert len(store.history()) == 1
    assert store.engine.kind == shared.kind


@pytest.mark.parametrize("kind", SERVER_ENGINES)
def test_a_server_database_is_migrated_once(kind: str) -> None:
    with scratch_database(kind) as url:
        StateStore(connect(url, None)).close()
        engine = connect(url, None)
        with StateStore(engine) as again:
            assert again.load().servers == {}
            with engine.transaction() as tx:
                assert engine.schema_version(tx) == SCHEMA_VERSION
                assert {"servers", "calls", "changes", "refreshd_schema"} <= engine.tables(tx)


@pytest.mark.parametrize("kind", SERVER_ENGINES)
def test_another_applications_database_is_refused(kind: str) -> None:
    """VICIdial's own database has a `servers` table: never migrated into."""
    with scratch_database(kind) as url:
        engine = connect(url, None)
        with engine.transaction() as tx:
            tx.execute("CREATE TABLE servers (server_id VARCHAR(20))")
        engine.close()
        with pytest.raises(StateError) as err:
            StateStore(connect(url, None))
    message = str(err.value)
    assert f"state database {url}" in message
    assert "tables named servers" in message
    assert "a database of its own" in message


@pytest.mark.parametrize("kind", SERVER_ENGINES)
def test_a_database_from_a_newer_refreshd_or_none_yet_is_refused(kind: str) -> None:
    with scratch_database(kind) as url:
        with pytest.raises(StateError, match="holds no refreshd state yet: start the daemon"):
            StateStore.open_readonly(connect(url, None))
        StateStore(connect(url, None)).close()
        engine = connect(url, None)
        with engine.transaction() as tx:
            engine.set_schema_version(tx, SCHEMA_VERSION + 1)
        engine.close()
        with pytest.raises(StateError, match="newer than this refreshd understands"):
            StateStore(connect(url, None))


@pytest.mark.parametrize("kind", SERVER_ENGINES)
def test_a_lost_connection_is_a_clear_error_then_reconnects(kind: str) -> None:
    # PostgreSQL trusts loopback: the password is sent, ignored, and must be shown nowhere.
    password = "s3cret-Passw0rd" if kind == "postgresql" else None
    with scratch_database(kind) as url:
        relay = TcpProxy(url.port)
        via = DatabaseUrl(url.user, url.host, relay.port, url.database, url.engine)
        try:
            store = StateStore(connect(via, password, timeout=2.0))
            call = NewCall("east-1", None, None, 1, Outcome.OK, SLOT, 100)
            servers = {"east-1": ServerEntry(last_outcome=Outcome.OK)}
            store.journal(servers=servers, logins={}, call=call)
            relay.cut()
            with pytest.raises(StateError) as err:
                store.journal(servers=servers, logins={}, call=call)
            relay.restore()
            store.journal(servers=servers, logins={}, call=call)  # a new connection, no restart
            assert len(store.history()) == 2
            store.close()
        finally:
            relay.close()
    message = str(err.value)
    assert message.startswith(f"state database {via}: cannot record a call: ")
    assert "connects again at its next write, no restart needed" in message
    assert password is None or password not in message


@pytest.mark.parametrize("kind", SERVER_ENGINES)
def test_a_connection_that_died_while_idle_costs_no_write(kind: str) -> None:
    """A database restarted overnight: the first journal write finds the connection dead at
    its first statement, connects again and writes, instead of losing that result."""
    with scratch_database(kind) as url:
        relay = TcpProxy(url.port)
        via = DatabaseUrl(url.user, url.host, relay.port, url.database, url.engine)
        try:
            store = StateStore(connect(via, None, timeout=2.0))
            relay.cut()
            relay.restore()  # back at once: only the open connection is gone
            call = NewCall("east-1", None, None, 1, Outcome.OK, SLOT, 100)
            servers = {"east-1": ServerEntry(last_outcome=Outcome.OK)}
            store.journal(servers=servers, logins={}, call=call)
            assert [c.server for c in store.history()] == ["east-1"]
            store.close()
        finally:
            relay.close()


def test_a_store_that_does_not_answer_is_named_with_the_fix(tmp_path: Path) -> None:
    from tests.support.ports import refused_port

    with refused_port() as port:
        url = f"postgresql://refreshd@127.0.0.1:{port}/refreshd"
        shared = config({"url": url}, tmp_path / "state.db")
        with pytest.raises(StateError) as err:
            open_store(shared)
    assert str(err.value).startswith(f"state database {url}: cannot open: ")
    assert "Check that the database server runs and answers from this host" in str(err.value)
    assert store_name(shared) == f"state database {url}"


def test_without_state_the_store_is_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with open_store(config(path=path)) as store:
        assert store.path == path
        assert store.engine.kind == "sqlite"
    with open_store(config(path=path), readonly=True) as reader:
        assert reader.readonly


def test_two_stores_journaling_at_once_lose_nothing(shared: Place) -> None:
    """Two processes' connections, four threads each, the same servers and logins: every
    write lands (each journal write queues on the change counter first: no deadlock)."""
    stores = [shared.open(), shared.open()]
    per_thread = 15

    def worker(n: int) -> None:
        store = stores[n % 2]
        for i in range(per_thread):
            at = SLOT + timedelta(seconds=n * 100 + i)
            name = SERVERS[i % 2]
            failed = LoginEntry(failed_logins=(at,))
            store.journal(
                servers={name: ServerEntry(last_outcome=Outcome.OK, last_done=at)},
                logins={"u_east": failed},
                call=NewCall(name, SLOT, at, 1, Outcome.OK, at, 100),
                done=(name, at),
            )
            store.beat(at)

    all_at_once(worker, 8)
    assert len(stores[0].history(limit=1000)) == 8 * per_thread
    assert len(stores[1].load().login("u_east").failed_logins) == 8 * per_thread

"""The fixtures every test may ask for, and the `process` mark. What they do lives in
tests/support/; here they are only registered."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from refreshd.dburl import DatabaseUrl
from refreshd.simulator import Simulator
from tests.support.cli import run_cli as run_in_process
from tests.support.config import WriteConfig, write_login_config
from tests.support.daemon import (
    Daemons,
    RunRefreshd,
    RunResult,
    StartDaemon,
)
from tests.support.daemon import run_refreshd as run_command
from tests.support.databases import good_cluster
from tests.support.fleet import FIGURES, Fleet, open_fleet, report
from tests.support.nobody import shared_directory
from tests.support.ports import refused_port as refusing_port
from tests.support.simulator import running_simulator
from tests.support.stores import Databases

PROCESS_TESTS = Path(__file__).parent / "process"

# No per-example deadline: on a loaded machine (eight workers on two cores) a slow example
# failed "flaky" tests of config loading that time nothing. Speed is `make bench`'s to
# measure, never a test's.
settings.register_profile("refreshd", deadline=None)
settings.load_profile("refreshd")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/process/ runs the real command: marked `process`, so that
    `pytest -m "not process"` runs the fast rest. Then the order the workers take tests in
    (`make test` hands them out one at a time, in this order): the `long` ones first, then
    the other real-process tests, which mostly wait, then the CPU-bound rest, which fills the
    gaps at the end. A long test handed out last would end a minute after everything else.
    Each module's tests stay together, so a module's fixtures are set up once per worker."""
    for item in items:
        if item.path.is_relative_to(PROCESS_TESTS):
            item.add_marker(pytest.mark.process)
    items.sort(key=_hand_out_rank)


def _hand_out_rank(item: pytest.Item) -> int:
    if item.get_closest_marker("long") is not None:
        return 0
    if item.get_closest_marker("process") is not None:
        return 1
    return 2


@pytest.fixture(scope="session", autouse=True)
def _print_figures() -> Iterator[None]:
    yield
    if FIGURES:
        report("totals", **FIGURES)


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A started simulator on 127.0.0.1 (a port of its own choosing) with
    config/simulator.toml's users and servers; stopped after the test."""
    with running_simulator() as sim:
        yield sim


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    """Where configs from `write_config` keep refreshd's SQLite state."""
    return tmp_path / "state.db"


@pytest.fixture
def write_config(tmp_path: Path, simulator: Simulator, state_path: Path) -> WriteConfig:
    """Factory: `write_config(*servers, timeout="2s", name="refreshd.toml") -> Path`, a
    config in tmp_path for the `simulator` (tests.support.config.write_login_config says
    what a server spec holds); state goes to the `state_path` fixture."""

    def write(
        *servers: Mapping[str, Any], timeout: str = "2s", name: str = "refreshd.toml"
    ) -> Path:
        return write_login_config(
            tmp_path / name,
            *servers,
            base_url=simulator.url,
            state_path=state_path,
            timeout=timeout,
        )

    return write


@pytest.fixture
def run_refreshd(tmp_path: Path) -> RunRefreshd:
    """Factory: `run_refreshd(ARGS, env=None, timeout=20) -> (returncode, stdout, stderr)`,
    the real command run to its end in tmp_path with a clean environment plus `env`."""

    def run(
        args: Sequence[str | Path], env: Mapping[str, str] | None = None, timeout: float = 20.0
    ) -> RunResult:
        try:
            done = run_command(*args, env=env, cwd=tmp_path, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            command = " ".join(map(str, args))
            pytest.fail(f"refreshd {command} ran over {timeout}s; stdout so far: {exc.stdout!r}")
        return done.returncode, done.stdout, done.stderr

    return run


@pytest.fixture
def run_cli(tmp_path: Path) -> RunRefreshd:
    """Factory: `run_refreshd`'s shape, but the command is `refreshd.cli.main` run in this
    process (tests.support.cli): for a test of a command's output and exit code where
    nothing belongs to the process itself. ~0.3 s of CPU less than a child each."""

    def run(
        args: Sequence[str | Path], env: Mapping[str, str] | None = None, timeout: float = 20.0
    ) -> RunResult:
        del timeout  # the shape of run_refreshd's; a command in-process cannot be cut off
        return run_in_process(*args, env=env, cwd=tmp_path)

    return run


@pytest.fixture
def start_daemon() -> Iterator[StartDaemon]:
    """Factory: `start_daemon(config, env=None) -> DaemonProcess`, the real `refreshd run`;
    every daemon is stopped after the test (a failure if it ignores SIGTERM for 30 s) and
    its stdout checked to hold JSON lines only."""
    started = Daemons()
    yield started.start
    started.stop_all()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A simulator with the adversarial tests' users, and the daemons run against it."""
    with open_fleet(tmp_path) as each:
        yield each


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can enter; removed after the test."""
    with shared_directory() as made:
        yield made


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test (bound, never listening,
    so no other process can take it meanwhile)."""
    with refusing_port() as port:
        yield port


@pytest.fixture
def cluster() -> Iterator[tuple[Simulator, DatabaseUrl]]:
    """The simulator mirroring its boxes into a real MariaDB database, and the URL of a
    read-only user of it (tests.support.databases.good_cluster). A module that needs
    another cluster defines its own `cluster`."""
    with good_cluster() as found:
        yield found


@pytest.fixture(scope="module")
def databases() -> Iterator[Databases]:
    """One migrated scratch database per server engine for a module's stores, emptied for
    each test that asks, dropped after the module (tests.support.stores.Databases)."""
    found = Databases()
    yield found
    found.close()

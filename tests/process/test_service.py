"""The service as systemd, Docker and operators see it: the real `refreshd run` process,
real signals, a real notify socket and real scrapes of /metrics, against the simulator on
loopback (SPEC.md, "Signals and service behaviour" and "Logs").

Every server gets its own path on the simulator, so the simulator's per-path counts say
exactly which server was called how often.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from refreshd.simulator import Simulator
from tests.support.config import (
    GOOD_PASSWORD,
    GOOD_USER,
    NOAPI_PASSWORD,
    NOAPI_USER,
    window_from_now,
    write_daemon_config,
)
from tests.support.daemon import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    DaemonProcess,
    StartDaemon,
    assert_json_lines_only,
)
from tests.support.simulator import api_path
from tests.support.waiting import eventually, holds_for

WRONG_PASSWORD = "wrong-pass-77"  # valid characters, refused by the simulator

# A daily window opened two seconds ago and lasting ten minutes: the daemon refreshes at
# once (catch-up) and never reaches the window's end during a test.
WINDOW_OPEN_SINCE = -2.0
WINDOW_LENGTH = 600.0


# --- Helpers -----------------------------------------------------------------------------


def requests_to(sim: Simulator, index: int) -> int:
    """How many API requests reached server `s<index>`'s path (counted on arrival)."""
    return int(sim.stats()["requests"].get(api_path(index), 0))


def refreshes_of(sim: Simulator, index: int) -> int:
    """How many refreshes the simulator carried out on server `s<index>`'s path."""
    return sum(
        1
        for call in sim.calls()
        if call["path"] == api_path(index) and call["answer_kind"] == "success"
    )


def index_of(daemon: DaemonProcess, event: str, **fields: Any) -> int:
    """Position of the first `event` line among everything the daemon logged."""
    for position, line in enumerate(daemon.events):
        if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
            return position
    raise AssertionError(f"no {event} {fields} logged")


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def scrape(port: int) -> tuple[str, list[Sample]]:
    """/metrics as text and as parsed samples."""
    status, text = http_get(port, "/metrics")
    assert status == 200, text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return text, samples


def scrape_once_settled(
    port: int, settled: Callable[[Sequence[Sample]], bool], timeout: float = 5.0
) -> list[Sample]:
    """/metrics once `settled(samples)` holds: a call's log line is written just before its
    metrics are updated and its next slot planned, so a scrape may briefly lag the log."""
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(port)
        if settled(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def metric(samples: Sequence[Sample], name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly `labels`, None when absent."""
    for sample in samples:
        if sample.name == name and sample.labels == labels:
            return float(sample.value)
    return None


# --- Fixtures ----------------------------------------------------------------------------


@dataclass
class Setup:
    """Writes the daemon's config: one credentials table per login, one server per index."""

    path: Path
    state_path: Path
    sim: Simulator
    window: str

    def server(self, index: int, credentials: str = "main", **extra: Any) -> dict[str, Any]:
        return {
            "name": f"s{index}",
            "api_url": self.sim.url + api_path(index),
            "credentials": credentials,
            "windows": [self.window],
            **extra,
        }

    def write(
        self,
        servers: Sequence[Mapping[str, Any]],
        *,
        credentials: Mapping[str, Mapping[str, Any]] | None = None,
        daemon: Mapping[str, Any] | None = None,
        client: Mapping[str, Any] | None = None,
        backoff: Mapping[str, Any] | None = None,
    ) -> Path:
        return write_daemon_config(
            self.path,
            servers=list(servers),
            credentials=credentials or {"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
            daemon={"state_path": str(self.state_path), "metrics_listen": "", **(daemon or {})},
            client={"timeout": "5s", **(client or {})},
            backoff=backoff,
        )


@pytest.fixture
def setup(tmp_path: Path, simulator: Simulator) -> Setup:
    return Setup(
        path=tmp_path / "refreshd.toml",
        state_path=tmp_path / "state.db",
        sim=simulator,
        window=window_from_now(WINDOW_OPEN_SINCE, WINDOW_LENGTH),
    )


class NotifyListener:
    """A stand-in for systemd: an AF_UNIX datagram socket collecting notify messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._cond = threading.Condition()
        self._closed = False
        self.messages: list[tuple[float, list[str]]] = []  # (monotonic, lines)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode().split("\n")))
                self._cond.notify_all()

    def received(self, line: str) -> list[int]:
        """Indexes of the messages holding `line`."""
        with self._cond:
            return [i for i, (_, lines) in enumerate(self.messages) if line in lines]

    def times(self, line: str) -> list[float]:
        with self._cond:
            return [at for at, lines in self.messages if line in lines]

    def wait_for(self, line: str, *, count: int = 1, timeout: float = 30.0) -> list[int]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [i for i, (_, lines) in enumerate(self.messages) if line in lines]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{count} x {line} not received in {timeout}s; got {self.messages}"
                    )
                self._cond.wait(left)

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self._sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifyListener]:
    path = tmp_path / "notify"
    if len(os.fsencode(path)) >= 100:  # sun_path holds 108 bytes
        path = Path(tempfile.mkdtemp(prefix="refreshd-")) / "notify"
    listener = NotifyListener(path)
    yield listener
    listener.close()


# --- SIGHUP: reload -------------------------------------------------------------------


def test_reload_adds_a_new_server_and_leaves_the_unchanged_one_alone(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(setup.write([setup.server(0)]))
    daemon.wait_for("refresh.succeeded", server="s0")

    setup.write([setup.server(0), setup.server(1)])
    daemon.signal(signal.SIGHUP)

    reloaded = daemon.wait_for("config.reloaded")[0]
    assert reloaded["added"] == ["s1"]
    assert reloaded["removed"] == []
    assert reloaded["changed"] == []
    daemon.wait_for("refresh.succeeded", server="s1")
    holds_for(
        lambda: requests_to(setup.sim, 0) == 1,
        seconds=1.0,
        what="s0, unchanged, is not refreshed again after the reload",
    )
    assert requests_to(setup.sim, 0) == 1
    assert requests_to(setup.sim, 1) == 1
    assert len(daemon.matching("refresh.succeeded", server="s0")) == 1


def _unknown_key(setup: Setup, valid: str) -> str:
    setup.write([setup.server(0, every="2s")], daemon={"shutdwon_grace": "5s"})
    return "daemon.shutdwon_grace"


def _bad_window(setup: Setup, valid: str) -> str:
    setup.write([{**setup.server(0, every="2s"), "windows": ["25:00-26:00"]}])
    return "servers[0].windows[0]"


def _truncated(setup: Setup, valid: str) -> str:
    setup.path.write_text(valid[: len(valid) // 2], encoding="utf-8")
    return ""


def _removed(setup: Setup, valid: str) -> str:
    setup.path.unlink()
    return "no such file"


@pytest.mark.parametrize(
    "break_config",
    [_unknown_key, _bad_window, _truncated, _removed],
    ids=["unknown-key", "bad-window", "truncated-file", "file-removed"],
)
def test_reload_of_an_invalid_config_is_rejected_and_the_old_one_keeps_running(
    setup: Setup,
    start_daemon: StartDaemon,
    break_config: Callable[[Setup, str], str],
) -> None:
    config = setup.write([setup.server(0, every="2s")])
    valid = config.read_text(encoding="utf-8")
    daemon = start_daemon(config)
    daemon.wait_for("refresh.succeeded", server="s0")

    named = break_config(setup, valid)
    daemon.signal(signal.SIGHUP)

    rejected = daemon.wait_for("config.rejected")[0]
    assert rejected["level"] == "error"
    assert rejected["errors"], rejected
    assert any(named in error for error in rejected["errors"]), rejected["errors"]
    before = len(daemon.matching("refresh.succeeded", server="s0"))
    daemon.wait_for("refresh.succeeded", server="s0", count=before + 2, timeout=20)
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    assert daemon.matching("config.reloaded") == []
    assert_json_lines_only(daemon)


def test_reload_with_a_new_password_ends_the_credentials_wait(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    wrong = {"main": {"user": GOOD_USER, "password": WRONG_PASSWORD}}
    config = setup.write([setup.server(0)], credentials=wrong, backoff={"auth_retry": "1h"})
    daemon = start_daemon(config)
    daemon.wait_for("credentials.suspended", credentials="main")
    assert setup.sim.stats()["logins"]["failed"] == 1

    setup.write([setup.server(0)], backoff={"auth_retry": "1h"})
    daemon.signal(signal.SIGHUP)

    daemon.wait_for("refresh.succeeded", server="s0", timeout=10)
    logins = setup.sim.stats()["logins"]
    assert (logins["failed"], logins["ok"]) == (1, 1)
    assert refreshes_of(setup.sim, 0) == 1


MAIN_AND_OPS = {
    "main": {"user": GOOD_USER, "password": GOOD_PASSWORD},
    "ops": {"user": NOAPI_USER, "password": NOAPI_PASSWORD},  # logs in, API access off
}


def _s0_suspended(
    setup: Setup, start_daemon: StartDaemon, credentials: Mapping[str, Mapping[str, Any]]
) -> DaemonProcess:
    """A daemon whose s0 logs in as `ops` (no API access), once s0 is suspended for it."""
    daemon = start_daemon(
        setup.write([setup.server(0, credentials="ops")], credentials=credentials)
    )
    daemon.wait_for("server.suspended", server="s0")
    return daemon


def test_reload_keeps_the_suspension_of_an_unchanged_server(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = _s0_suspended(setup, start_daemon, MAIN_AND_OPS)

    setup.write([setup.server(0, credentials="ops"), setup.server(1)], credentials=MAIN_AND_OPS)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("refresh.succeeded", server="s1")
    holds_for(
        lambda: requests_to(setup.sim, 0) == 1,
        seconds=1.0,
        what="the suspended s0 is not called after the reload",
    )

    assert requests_to(setup.sim, 0) == 1
    assert daemon.matching("server.resumed") == []


def test_reload_pointing_a_suspended_server_at_other_credentials_resumes_it(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = _s0_suspended(setup, start_daemon, MAIN_AND_OPS)

    setup.write([setup.server(0, credentials="main")], credentials=MAIN_AND_OPS)
    daemon.signal(signal.SIGHUP)

    daemon.wait_for("refresh.succeeded", server="s0", timeout=10)
    assert refreshes_of(setup.sim, 0) == 1


def test_reload_changing_the_login_of_a_suspended_server_resumes_it(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = _s0_suspended(setup, start_daemon, {"ops": MAIN_AND_OPS["ops"]})

    fixed = {"ops": {"user": GOOD_USER, "password": GOOD_PASSWORD}}
    setup.write([setup.server(0, credentials="ops")], credentials=fixed)
    daemon.signal(signal.SIGHUP)

    daemon.wait_for("refresh.succeeded", server="s0", timeout=15)


def test_reload_that_removes_a_server_stops_its_calls(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(setup.write([setup.server(0, every="1s"), setup.server(1, every="1s")]))
    daemon.wait_for("refresh.succeeded", server="s1")

    setup.write([setup.server(0, every="1s")])
    daemon.signal(signal.SIGHUP)

    assert daemon.wait_for("config.reloaded")[0]["removed"] == ["s1"]
    # A call to s1 already on the wire may still land; it has once s0 is called again.
    calls_to_kept = requests_to(setup.sim, 0)
    eventually(
        lambda: requests_to(setup.sim, 0) > calls_to_kept, what="s0's next call after the reload"
    )
    calls_to_removed = requests_to(setup.sim, 1)
    calls_to_kept = requests_to(setup.sim, 0)

    def kept_called_twice_more() -> bool:
        assert requests_to(setup.sim, 1) == calls_to_removed, "the removed s1 was called"
        return requests_to(setup.sim, 0) >= calls_to_kept + 2

    eventually(kept_called_twice_more, timeout=15, what="two more `every` periods of s0")


def test_reload_applies_a_changed_client_timeout(setup: Setup, start_daemon: StartDaemon) -> None:
    setup.sim.set_fault("latency", latency=2.0, path=api_path(0))
    config = setup.write([setup.server(0, every="2s")], client={"timeout": "10s"})
    daemon = start_daemon(config)
    daemon.wait_for("refresh.succeeded", server="s0")

    setup.write([setup.server(0, every="2s")], client={"timeout": "1s"})
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("config.reloaded")
    reloaded = index_of(daemon, "config.reloaded")

    def a_call_timed_out() -> bool:
        return any(
            line.get("event") in ("refresh.retrying", "refresh.failed")
            and line.get("outcome") == "transient"
            for line in daemon.events[reloaded:]
        )

    eventually(a_call_timed_out, timeout=15, what="a call cut at the reloaded 1 s time-out")


# --- SIGTERM / SIGINT: clean stop -------------------------------------------------------


def _start_with_a_slow_call(
    setup: Setup,
    start_daemon: StartDaemon,
    *,
    latency: float,
    grace: str,
    timeout: str,
    fast: Mapping[str, Any] | None = None,
) -> DaemonProcess:
    """A daemon whose call to s0 takes `latency` seconds, returned once that call is on the
    wire (`fast`: a second server beside it)."""
    setup.sim.set_fault("latency", latency=latency, path=api_path(0))
    servers = [setup.server(0), *([fast] if fast else [])]
    config = setup.write(servers, daemon={"shutdown_grace": grace}, client={"timeout": timeout})
    daemon = start_daemon(config)
    eventually(lambda: requests_to(setup.sim, 0) == 1, what="the slow call on the wire")
    return daemon


def _sigterm_and_time(daemon: DaemonProcess, *, timeout: float) -> tuple[int, float]:
    """SIGTERM, then the exit code and the seconds from the signal to the exit."""
    asked = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.wait(timeout=timeout)
    return code, time.monotonic() - asked


def test_sigterm_lets_a_call_in_flight_finish_then_exits_0(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = _start_with_a_slow_call(setup, start_daemon, latency=5.0, grace="20s", timeout="10s")

    code, took = _sigterm_and_time(daemon, timeout=15)

    assert code == EXIT_OK
    assert took < 10, f"took {took:.1f}s: well inside the 20 s grace"
    assert refreshes_of(setup.sim, 0) == 1
    assert index_of(daemon, "daemon.stopping") < index_of(daemon, "refresh.succeeded", server="s0")
    assert index_of(daemon, "refresh.succeeded", server="s0") < index_of(daemon, "daemon.stopped")
    assert_json_lines_only(daemon)


def test_sigterm_waits_no_longer_than_shutdown_grace(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = _start_with_a_slow_call(setup, start_daemon, latency=20.0, grace="2s", timeout="30s")

    code, took = _sigterm_and_time(daemon, timeout=15)

    assert code == EXIT_OK
    # The 2 s grace, not the call's 20 s: the bound leaves a loaded machine room.
    assert 1.5 < took < 10, f"took {took:.1f}s for a 2 s grace"
    assert daemon.matching("daemon.stopped")
    assert daemon.matching("refresh.succeeded") == []
    assert_json_lines_only(daemon)


def test_sigterm_starts_no_new_call_during_the_graceful_wait(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = _start_with_a_slow_call(
        setup,
        start_daemon,
        latency=4.0,
        grace="20s",
        timeout="10s",
        fast=setup.server(1, every="1s"),
    )
    daemon.wait_for("refresh.succeeded", server="s1")

    daemon.signal(signal.SIGTERM)
    daemon.wait_for("daemon.stopping")
    calls_to_fast_server = requests_to(setup.sim, 1)

    assert daemon.wait(timeout=15) == EXIT_OK
    assert refreshes_of(setup.sim, 0) == 1  # the call in flight finished
    # Four seconds of `every = "1s"` would be four calls; one sent as the signal came in
    # may reach the simulator only after the daemon said it was stopping.
    assert requests_to(setup.sim, 1) <= calls_to_fast_server + 1


def test_second_sigterm_during_the_graceful_wait_exits_at_once(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = _start_with_a_slow_call(setup, start_daemon, latency=20.0, grace="20s", timeout="30s")
    daemon.signal(signal.SIGTERM)
    # The "second signal means now" handler is installed before daemon.stopping is logged
    # (refreshd/daemon.py _stop).
    daemon.wait_for("daemon.stopping")

    code, took = _sigterm_and_time(daemon, timeout=10)

    assert code == EXIT_FAILED  # README: "A second signal exits at once (exit 1)."
    # At once: the grace left (20 s) is not waited; the bound leaves a loaded machine room.
    assert took < 8, f"took {took:.1f}s after the second SIGTERM"
    assert daemon.matching("daemon.stopped", forced=True)
    assert_json_lines_only(daemon)


def test_sigint_stops_cleanly_like_sigterm(setup: Setup, start_daemon: StartDaemon) -> None:
    daemon = start_daemon(setup.write([setup.server(0)]))
    daemon.wait_for("refresh.succeeded", server="s0")

    daemon.signal(signal.SIGINT)

    assert daemon.wait(timeout=10) == EXIT_OK
    assert daemon.wait_for("daemon.stopping")[0]["signal"] == "SIGINT"
    assert daemon.matching("daemon.stopped")
    assert_json_lines_only(daemon)


def test_restart_does_not_refresh_a_slot_already_refreshed(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    config = setup.write([setup.server(0)])
    first = start_daemon(config)
    first.wait_for("refresh.succeeded", server="s0")
    assert first.stop() == EXIT_OK

    second = start_daemon(config)
    second.wait_for("daemon.started")
    holds_for(
        lambda: requests_to(setup.sim, 0) == 1,
        seconds=1.5,  # a catch-up would fire at once
        what="no catch-up of the slot refreshed before the restart",
    )

    assert requests_to(setup.sim, 0) == 1
    assert second.matching("refresh.succeeded") == []


def test_restart_keeps_a_credentials_wait(setup: Setup, start_daemon: StartDaemon) -> None:
    wrong = {"main": {"user": GOOD_USER, "password": WRONG_PASSWORD}}
    config = setup.write([setup.server(0)], credentials=wrong, backoff={"auth_retry": "1h"})
    first = start_daemon(config)
    first.wait_for("credentials.suspended", credentials="main")
    assert first.stop() == EXIT_OK

    second = start_daemon(config)
    second.wait_for("daemon.started")
    holds_for(
        lambda: requests_to(setup.sim, 0) == 1,
        seconds=1.5,  # a login attempt would be made at once
        what="no login attempt during the credentials wait kept over the restart",
    )

    assert setup.sim.stats()["logins"]["failed"] == 1
    assert requests_to(setup.sim, 0) == 1


# --- systemd notify ----------------------------------------------------------------------


def test_notify_ready_once_scheduled(
    setup: Setup, start_daemon: StartDaemon, notify_socket: NotifyListener
) -> None:
    daemon = start_daemon(
        setup.write([setup.server(0)]), {"NOTIFY_SOCKET": str(notify_socket.path)}
    )

    notify_socket.wait_for("READY=1")
    daemon.wait_for("daemon.started")
    assert notify_socket.received("WATCHDOG=1") == []


def test_notify_reloading_then_ready_around_a_reload(
    setup: Setup, start_daemon: StartDaemon, notify_socket: NotifyListener
) -> None:
    config = setup.write([setup.server(0)])
    daemon = start_daemon(config, {"NOTIFY_SOCKET": str(notify_socket.path)})
    started = notify_socket.wait_for("READY=1")[0]

    daemon.signal(signal.SIGHUP)
    daemon.wait_for("config.reloaded")

    reloading = notify_socket.wait_for("RELOADING=1")
    ready = notify_socket.wait_for("READY=1", count=2)
    assert started < reloading[0] < ready[1]


def test_notify_ready_after_a_rejected_reload_too(
    setup: Setup, start_daemon: StartDaemon, notify_socket: NotifyListener
) -> None:
    config = setup.write([setup.server(0)])
    daemon = start_daemon(config, {"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait_for("READY=1")

    config.write_text("[daemon\n", encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("config.rejected")

    reloading = notify_socket.wait_for("RELOADING=1")
    ready = notify_socket.wait_for("READY=1", count=2)
    assert reloading[0] < ready[1]


def test_notify_stopping_on_sigterm(
    setup: Setup, start_daemon: StartDaemon, notify_socket: NotifyListener
) -> None:
    daemon = start_daemon(
        setup.write([setup.server(0)]), {"NOTIFY_SOCKET": str(notify_socket.path)}
    )
    ready = notify_socket.wait_for("READY=1")[0]

    daemon.signal(signal.SIGTERM)

    assert daemon.wait(timeout=10) == EXIT_OK
    stopping = notify_socket.wait_for("STOPPING=1")
    assert stopping[0] > ready


def test_notify_watchdog_pings_at_half_watchdog_usec(
    setup: Setup, start_daemon: StartDaemon, notify_socket: NotifyListener
) -> None:
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "2000000"}
    start_daemon(setup.write([setup.server(0)]), env)
    notify_socket.wait_for("READY=1")

    notify_socket.wait_for("WATCHDOG=1", count=6, timeout=20)

    # Every second (half systemd's 2 s deadline), not every 2 s nor every heartbeat (10 s):
    # told by the mean gap, since one ping a loaded machine delays moves each gap.
    pings = notify_socket.times("WATCHDOG=1")
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert 0.8 < (pings[-1] - pings[0]) / len(gaps) < 1.5, gaps


# --- /metrics and /healthz ---------------------------------------------------------------


SERVERS = ("s0", "s1")


# Metrics on a port the daemon picks; its daemon.started line says which.
ANY_PORT = {"metrics_listen": "127.0.0.1:0"}


def _two_servers_one_denied(setup: Setup) -> Path:
    return setup.write(
        [setup.server(0), setup.server(1, credentials="noapi")],
        credentials={
            "main": {"user": GOOD_USER, "password": GOOD_PASSWORD},
            "noapi": {"user": NOAPI_USER, "password": NOAPI_PASSWORD},
        },
        daemon=ANY_PORT,
    )


def test_metrics_count_refreshes_by_outcome_as_the_simulator_saw_them(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(_two_servers_one_denied(setup))
    daemon.wait_for("refresh.succeeded", server="s0")
    daemon.wait_for("server.suspended", server="s1")

    samples = scrape_once_settled(
        daemon.metrics_port(),
        lambda got: metric(got, "refreshd_refresh_duration_seconds_count") == 2,
    )

    total = "refreshd_refresh_total"
    assert metric(samples, total, server="s0", outcome="ok") == requests_to(setup.sim, 0) == 1
    assert (
        metric(samples, total, server="s1", outcome="permission_denied")
        == requests_to(setup.sim, 1)
        == 1
    )
    assert metric(samples, "refreshd_refresh_duration_seconds_count") == 2
    assert metric(samples, "refreshd_refresh_duration_seconds_bucket", le="+Inf") == 2
    assert metric(samples, "refreshd_refresh_duration_seconds_sum") is not None


def test_metrics_show_last_success_next_slot_and_suspension_per_server(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    before = time.time()
    daemon = start_daemon(_two_servers_one_denied(setup))
    daemon.wait_for("refresh.succeeded", server="s0")
    daemon.wait_for("server.suspended", server="s1")

    def planned_ahead(got: Sequence[Sample]) -> bool:
        slots = [metric(got, "refreshd_next_slot_timestamp_seconds", server=s) for s in SERVERS]
        return all(slot is not None and slot > time.time() for slot in slots)

    samples = scrape_once_settled(daemon.metrics_port(), planned_ahead)
    now = time.time()

    last_success = metric(samples, "refreshd_last_success_timestamp_seconds", server="s0")
    assert last_success is not None
    assert before <= last_success <= now
    assert metric(samples, "refreshd_last_success_timestamp_seconds", server="s1") is None
    for server in SERVERS:
        next_slot = metric(samples, "refreshd_next_slot_timestamp_seconds", server=server)
        assert next_slot is not None, server
        assert next_slot > before + WINDOW_LENGTH / 2, (server, next_slot)
    assert metric(samples, "refreshd_server_suspended", server="s1") == 1
    assert metric(samples, "refreshd_server_suspended", server="s0") == 0


def test_metrics_count_config_reloads_by_result(setup: Setup, start_daemon: StartDaemon) -> None:
    config = setup.write([setup.server(0)], daemon=ANY_PORT)
    valid = config.read_text(encoding="utf-8")
    daemon = start_daemon(config)
    daemon.wait_for("daemon.started")

    daemon.signal(signal.SIGHUP)
    daemon.wait_for("config.reloaded")
    config.write_text(valid.replace("[daemon]", "[daemon]\nbogus = 1"), encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("config.rejected")

    _, samples = scrape(daemon.metrics_port())
    assert metric(samples, "refreshd_config_reloads_total", result="ok") == 1
    assert metric(samples, "refreshd_config_reloads_total", result="rejected") == 1


def test_healthz_answers_200_while_running(setup: Setup, start_daemon: StartDaemon) -> None:
    config = setup.write([setup.server(0)], daemon=ANY_PORT)
    daemon = start_daemon(config)
    port = daemon.metrics_port()

    for _ in range(3):
        status, body = http_get(port, "/healthz")
        assert status == 200, body
        time.sleep(0.5)


def test_metrics_show_a_call_in_flight(setup: Setup, start_daemon: StartDaemon) -> None:
    setup.sim.set_fault("latency", latency=5.0, path=api_path(0))
    config = setup.write(
        [setup.server(0)],
        daemon={**ANY_PORT, "shutdown_grace": "1s"},
        client={"timeout": "10s"},
    )
    daemon = start_daemon(config)
    daemon.wait_for("daemon.started")
    eventually(lambda: requests_to(setup.sim, 0) == 1, what="the slow call on the wire")

    _, samples = scrape(daemon.metrics_port())

    assert metric(samples, "refreshd_calls_in_flight") == 1


def test_metrics_show_a_suspension_carried_over_a_restart(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    config = _two_servers_one_denied(setup)
    first = start_daemon(config)
    first.wait_for("server.suspended", server="s1")
    assert first.stop() == EXIT_OK

    second = start_daemon(config)
    _, samples = scrape(second.metrics_port())

    assert requests_to(setup.sim, 1) == 1  # still suspended: not called again
    assert metric(samples, "refreshd_server_suspended", server="s1") == 1


def test_busy_metrics_port_refuses_to_start_naming_the_setting(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = int(taken.getsockname()[1])
        config = setup.write([setup.server(0)], daemon={"metrics_listen": f"127.0.0.1:{busy}"})
        daemon = start_daemon(config)
        code = daemon.wait(timeout=15)

    assert code == EXIT_FAILED
    failed = daemon.matching("daemon.failed")
    assert len(failed) == 1
    assert "metrics_listen" in failed[0]["error"]
    assert str(busy) in failed[0]["error"]
    assert daemon.matching("daemon.started") == []
    assert requests_to(setup.sim, 0) == 0
    assert_json_lines_only(daemon)


# --- Start-up refusals and secrets -------------------------------------------------------


def test_invalid_config_at_start_exits_78_with_every_error(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    config = setup.write(
        [{**setup.server(0), "windows": ["25:00-26:00"]}], daemon={"shutdwon_grace": "5s"}
    )

    daemon = start_daemon(config)

    assert daemon.wait(timeout=15) == EXIT_CONFIG
    rejected = daemon.matching("config.rejected")
    assert len(rejected) == 1
    errors = rejected[0]["errors"]
    assert any(e.startswith("daemon.shutdwon_grace") for e in errors), errors
    assert any(e.startswith("servers[0].windows[0]") for e in errors), errors
    assert daemon.matching("daemon.started") == []
    assert_json_lines_only(daemon)


def test_passwords_never_appear_in_metrics_stdout_or_stderr(
    setup: Setup,
    start_daemon: StartDaemon,
) -> None:
    # s1's wrong password is echoed back by VICIdial in its "Login incorrect" answer.
    config = setup.write(
        [setup.server(0), setup.server(1, credentials="wrong")],
        credentials={
            "main": {"user": GOOD_USER, "password": GOOD_PASSWORD},
            "wrong": {"user": "admin", "password": WRONG_PASSWORD},
        },
        daemon=ANY_PORT,
        backoff={"auth_retry": "1h"},
    )
    daemon = start_daemon(config)
    daemon.wait_for("refresh.succeeded", server="s0")
    daemon.wait_for("credentials.suspended", credentials="wrong")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("config.reloaded")

    text, _ = scrape(daemon.metrics_port())
    assert daemon.stop() == EXIT_OK

    assert daemon.matching("refresh.failed", server="s1", outcome="auth_failed")
    for secret in (GOOD_PASSWORD, WRONG_PASSWORD):
        assert secret not in text
        assert secret not in daemon.stdout
        assert secret not in daemon.stderr


def test_a_rejected_reload_never_shows_the_new_passwords(
    setup: Setup, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(setup.write([setup.server(0)]))
    daemon.wait_for("daemon.started")
    new_secret, misspelt_secret = "new-secret-4242", "typo-secret-4343"
    setup.write(
        [setup.server(0)],
        credentials={
            "main": {"user": GOOD_USER, "password": new_secret, "passwd": misspelt_secret},
            "other": {"user": "admin", "password": "bad secret 4444!"},
        },
    )

    daemon.signal(signal.SIGHUP)

    rejected = daemon.wait_for("config.rejected")[0]
    assert len(rejected["errors"]) == 2, rejected["errors"]
    shown = json.dumps(daemon.events) + daemon.stderr
    for secret in (new_secret, misspelt_secret, "bad secret 4444!", "badsecret4444"):
        assert secret not in shown

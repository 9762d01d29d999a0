"""The real daemon's /metrics and /healthz endpoint against hostile clients: a flood of idle
connections, a trickling client, unknown paths, the process's file-descriptor limit; IPv6;
and `refreshd check` warning when the endpoint listens beyond loopback (issue 12, item 7).

`pytest -s` prints the figures for docs/RELIABILITY.md as `RELIABILITY {...}` lines."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from refreshd.httpd import EXCHANGE_TIMEOUT, MAX_CONNECTIONS
from tests.support.config import GOOD_PASSWORD, GOOD_USER, window_from_now, write_daemon_config
from tests.support.daemon import EXIT_OK, DaemonProcess, RunRefreshd, StartDaemon, fds_and_threads
from tests.support.fleet import http_get, report
from tests.support.sockets import closed_by_peer, has_ipv6_loopback
from tests.support.waiting import eventually

FLOOD = 1000
# Docker's HEALTHCHECK in our Dockerfile gives /healthz 3 s.
HEALTHZ_TIMEOUT = 3.0


def write_config(tmp_path: Path, metrics_listen: str = "127.0.0.1:0") -> Path:
    """One server whose window is an hour away (no call during the test), metrics on."""
    return write_daemon_config(
        tmp_path / "refreshd.toml",
        servers=[
            {
                "name": "s0",
                "api_url": "http://127.0.0.1:9/vicidial/non_agent_api.php",
                "credentials": "main",
                "windows": [window_from_now(3600, 60)],
            }
        ],
        credentials={"main": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        daemon={"state_path": str(tmp_path / "state.db"), "metrics_listen": metrics_listen},
    )


@contextlib.contextmanager
def open_file_limit_raised() -> Iterator[None]:
    """This test process's soft limit on open files raised to its hard limit: a thousand
    sockets would not fit under a soft limit of 1,024 beside pytest's own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def healthz(url: str, timeout: float = HEALTHZ_TIMEOUT) -> tuple[int, float]:
    started = time.monotonic()
    with socket.create_connection(_address(url), timeout=timeout) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: refreshd\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return int(answer.split(b" ")[1]), time.monotonic() - started


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.split("//")[1].split("/")[0].rpartition(":")
    return host.strip("[]"), int(port)


def started_url(daemon: DaemonProcess) -> str:
    (started,) = daemon.wait_for("daemon.started")[:1]
    url = started["metrics"]
    assert isinstance(url, str), started
    return url


def test_healthz_answers_in_time_with_a_thousand_idle_connections_open(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(write_config(tmp_path))
    url = started_url(daemon)
    assert healthz(url)[0] == 200
    fds_before, threads_before = fds_and_threads(daemon.pid)
    with open_file_limit_raised():
        idle = [socket.create_connection(_address(url), timeout=5) for _ in range(FLOOD)]
        try:
            status, seconds = healthz(url)
            fds_during, threads_during = fds_and_threads(daemon.pid)
            pushed_out = sum(closed_by_peer(sock) for sock in idle)
        finally:
            for sock in idle:
                sock.close()
    report(
        "metrics-idle-flood",
        idle_connections=FLOOD,
        healthz_status=status,
        healthz_ms=round(seconds * 1000, 1),
        daemon_fds=[fds_before, fds_during],
        daemon_threads=[threads_before, threads_during],
        closed_by_the_daemon=pushed_out,
    )
    assert status == 200
    assert seconds < HEALTHZ_TIMEOUT
    assert threads_during <= threads_before + 2  # no thread per connection
    assert fds_during <= fds_before + MAX_CONNECTIONS + 2  # the connection bound
    assert pushed_out >= FLOOD - MAX_CONNECTIONS
    assert daemon.matching("metrics.error") == []
    assert GOOD_PASSWORD not in daemon.stdout + daemon.stderr


def test_a_trickling_client_is_cut_off_at_the_exchange_time_out(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(write_config(tmp_path))
    url = started_url(daemon)
    trickle = b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 1000
    cut_after = None
    with socket.create_connection(_address(url), timeout=5) as sock:
        started = time.monotonic()
        for byte in trickle:
            if closed_by_peer(sock):
                cut_after = time.monotonic() - started
                break
            sock.setblocking(True)
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                cut_after = time.monotonic() - started
                break
            if time.monotonic() - started > EXCHANGE_TIMEOUT + 15:
                break
            time.sleep(0.25)  # not a wait for a condition: the trickle's own pace
    report("metrics-slowloris", byte_every_s=0.25, cut_after_s=cut_after)
    assert cut_after is not None, f"still connected {EXCHANGE_TIMEOUT + 15} s later"
    assert EXCHANGE_TIMEOUT - 0.5 < cut_after < EXCHANGE_TIMEOUT + 5  # room for a loaded host
    assert healthz(url)[0] == 200


def test_unknown_paths_are_not_found_and_the_three_endpoints_answer(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(write_config(tmp_path))
    url = started_url(daemon)
    base = url.removesuffix("/metrics")

    status, text = http_get(url)
    assert status == 200
    assert "refreshd_build_info" in text
    assert http_get(base + "/healthz") == (200, "ok\n")
    status, text = http_get(base + "/")
    assert status == 200
    assert "<title>refreshd status</title>" in text
    for path in ("/favicon.ico", "/metrics/x", "/admin", "/index.html"):
        status, text = http_get(base + path)
        assert status == 404, path
        assert "/metrics and /healthz" in text


def test_reaching_the_file_limit_at_accept_is_one_log_line_not_a_traceback(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    daemon = start_daemon(write_config(tmp_path), preexec_fn=few_files)
    url = started_url(daemon)
    flood = [socket.create_connection(_address(url), timeout=5) for _ in range(100)]
    try:
        daemon.wait_for("metrics.error", timeout=10)
    finally:
        for sock in flood:
            sock.close()
    # The connections it held are gone with their clients; it accepts again within its
    # retry delay (one second), and the loop never died.
    eventually(lambda: _healthz_ok(url), timeout=15, what="/healthz answering again")
    errors = daemon.matching("metrics.error")
    report("metrics-file-limit", flood=100, nofile=40, metrics_error_lines=len(errors))
    assert len(errors) == 1, errors  # at most one line a minute
    assert "out of system resource" in errors[0]["error"]
    assert "Too many open files" in errors[0]["error"]
    assert daemon.stderr == ""


def _healthz_ok(url: str) -> bool:
    try:
        return healthz(url, timeout=1)[0] == 200
    except OSError:
        return False


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no ::1")
def test_metrics_listen_on_ipv6_loopback_starts_and_answers(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(write_config(tmp_path, metrics_listen="[::1]:0"))
    url = started_url(daemon)

    assert url.startswith("http://[::1]:")
    assert url.endswith("/metrics")
    assert http_get(url)[0] == 200
    assert http_get(url.removesuffix("/metrics") + "/healthz") == (200, "ok\n")
    assert daemon.matching("daemon.failed") == []


BEYOND = ("0.0.0.0:9464", "[::]:9464", "192.0.2.10:9464", "metrics.example.com:9464")
LOOPBACK = ("127.0.0.1:9464", "[::1]:9464", "localhost:9464", "")


@pytest.mark.parametrize("listen", BEYOND + LOOPBACK)
def test_check_warns_when_metrics_listen_beyond_loopback(
    tmp_path: Path, run_cli: RunRefreshd, listen: str
) -> None:
    config = write_config(tmp_path, metrics_listen=listen)

    code, _out, err = run_cli(["check", "-c", str(config)])

    assert code == EXIT_OK, err
    warned = [line for line in err.splitlines() if "daemon.metrics_listen" in line]
    if listen in BEYOND:
        assert len(warned) == 1, err
        assert listen in warned[0]
        assert "firewall" in warned[0]
    else:
        assert warned == [], err

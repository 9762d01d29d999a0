"""The /metrics and /healthz endpoint in-process, on real loopback sockets: what each path
answers, and how it holds up against clients that trickle, idle, flood or talk nonsense."""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from refreshd.httpd import EndpointAnswer, MetricsServer
from refreshd.metrics import Metrics
from tests.support.sockets import closed_by_peer, has_ipv6_loopback
from tests.support.waiting import eventually


@contextlib.contextmanager
def serving(
    healthy: Callable[[], bool] = lambda: True, host: str = "127.0.0.1", **options: Any
) -> Iterator[MetricsServer]:
    server = MetricsServer(host, 0, Metrics().registry, healthy, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def exchange(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    """Send `request` raw and read the answer to its end (the server closes after it)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(port: int, path: str, method: str = "GET", headers: str = "") -> tuple[int, bytes]:
    answer = exchange(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


# --- what each path answers ---------------------------------------------------------------


def test_metrics_and_healthz_answer_and_every_other_path_is_not_found() -> None:
    with serving() as server:
        status, body = get(server.port, "/metrics")
        assert status == 200
        assert b"refreshd_build_info" in body
        assert get(server.port, "/metrics?name[]=x")[0] == 200
        assert get(server.port, "/healthz") == (200, b"ok\n")
        for path in ("/", "/favicon.ico", "/metricsx", "/healthz/", "/../etc/passwd"):
            status, body = get(server.port, path)
            assert status == 404, path
            assert b"/metrics and /healthz" in body


def test_healthz_says_503_while_unhealthy() -> None:
    healthy = [True]
    with serving(lambda: healthy[0]) as server:
        healthy[0] = False
        assert get(server.port, "/healthz") == (503, b"scheduling loop stalled\n")


def test_head_gets_the_headers_without_the_body() -> None:
    with serving() as server:
        answer = exchange(server.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: " in head
    assert b"Content-Length: 0" not in head
    assert body == b""


def test_other_methods_are_refused() -> None:
    with serving() as server:
        assert get(server.port, "/metrics", method="POST")[0] == 405


def test_metrics_are_gzipped_when_the_scraper_asks() -> None:
    with serving() as server:
        status, body = get(server.port, "/metrics", headers="Accept-Encoding: gzip\r\n")
    assert status == 200
    assert b"refreshd_build_info" in gzip.decompress(body)


@pytest.mark.parametrize(
    "request_bytes",
    [b"NONSENSE\r\n\r\n", b"GET /metrics\r\n\r\n", b"GET /x HTTP/1.1\r\nno colon\r\n\r\n"],
    ids=["one-word", "no-version", "header-without-colon"],
)
def test_a_malformed_request_gets_400(request_bytes: bytes) -> None:
    with serving() as server:
        assert exchange(server.port, request_bytes).startswith(b"HTTP/1.1 400 ")


def test_a_request_head_over_the_limit_gets_431_and_the_server_lives_on() -> None:
    with serving() as server:
        huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
        assert exchange(server.port, huge).startswith(b"HTTP/1.1 431 ")
        assert get(server.port, "/healthz")[0] == 200


def test_a_failing_health_check_is_a_500_not_a_dead_server() -> None:
    def broken() -> bool:
        raise RuntimeError("bug")

    with serving(broken) as server, structlog.testing.capture_logs() as logs:
        assert get(server.port, "/healthz?token=s3cret")[0] == 500
        assert get(server.port, "/metrics")[0] == 200
    (error,) = [line for line in logs if line["event"] == "metrics.error"]
    assert "answering /healthz: RuntimeError('bug')" in error["error"]
    assert "s3cret" not in str(logs)  # the query string is the client's, never logged


# --- clients that misbehave ---------------------------------------------------------------


def test_a_trickling_client_is_cut_off_at_the_exchange_time_out() -> None:
    with (
        serving(exchange_timeout=0.5) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        started = time.monotonic()
        cut = None
        for byte in b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 200:  # 11 s at the pace below
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                cut = time.monotonic() - started
                break
            if closed_by_peer(sock):
                cut = time.monotonic() - started
                break
            sock.setblocking(True)
            time.sleep(0.05)  # not a wait for a condition: the trickle's own pace
    assert cut is not None, "the trickle was never cut off"
    assert 0.4 < cut < 5.0, cut  # the 0.5 s time-out, with room for a loaded machine


def test_an_idle_connection_is_closed_at_the_exchange_time_out() -> None:
    with (
        serving(exchange_timeout=0.3) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        started = time.monotonic()
        assert sock.recv(1) == b""  # blocks until the server closes it
        assert 0.2 < time.monotonic() - started < 4.0  # 0.3 s, not the socket's 5 s
        eventually(lambda: server.open_connections == 0, what="forgotten")


def test_at_the_bound_the_oldest_idle_connection_makes_room_for_healthz() -> None:
    with serving(max_connections=4) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
        try:
            eventually(lambda: server.open_connections == 4, timeout=5, what="at the bound")
            assert get(server.port, "/healthz") == (200, b"ok\n")
            # The four newest survive; each newcomer pushed out the oldest one.
            eventually(
                lambda: [closed_by_peer(s) for s in idle] == [True] * 7 + [False] * 3,
                timeout=5,
                what="the oldest seven (six, then one for /healthz) closed",
            )
        finally:
            for sock in idle:
                sock.close()


def test_at_the_bound_with_every_connection_being_answered_the_newcomer_is_closed() -> None:
    release = threading.Event()

    def slow() -> bool:
        release.wait(5)
        return True

    with serving(slow, max_connections=2) as server:
        busy = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            for sock in busy:
                sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            eventually(lambda: server.open_connections == 2, timeout=5, what="two answered")
            with (
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as late,
                contextlib.suppress(ConnectionError),
            ):
                assert late.recv(1) == b""  # closed at once, never queued behind them
            release.set()
            for sock in busy:
                sock.settimeout(5)
                assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        finally:
            release.set()
            for sock in busy:
                sock.close()


def test_a_thousand_idle_connections_use_no_thread_each() -> None:
    with serving() as server:
        before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(1000)]
        try:
            assert get(server.port, "/healthz")[0] == 200
            assert threading.active_count() <= before + 2  # the answer threads, at most
            assert server.open_connections <= 64
        finally:
            for sock in idle:
                sock.close()


# --- where it listens ---------------------------------------------------------------------


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no ::1")
def test_it_listens_on_ipv6_loopback_and_names_the_url_with_brackets() -> None:
    with serving(host="::1") as server:
        assert server.url == f"http://[::1]:{server.port}/metrics"
        answer = exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n", host="::1")
        assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_busy_port_raises_at_construction() -> None:
    with serving() as server, pytest.raises(OSError, match="in use"):
        MetricsServer("127.0.0.1", server.port, Metrics().registry, lambda: True)


def test_the_listen_backlog_holds_a_burst_that_is_not_accepted_yet() -> None:
    # Not started: nothing accepts, so every handshake rests on the kernel's queue alone.
    # With socketserver's backlog of 5, the seventh connect would wait for a SYN retry.
    server = MetricsServer("127.0.0.1", 0, Metrics().registry, lambda: True)
    try:
        socks = [
            socket.create_connection(("127.0.0.1", server.port), timeout=0.5) for _ in range(100)
        ]
        for sock in socks:
            sock.close()
    finally:
        server.stop()


def test_no_thread_to_answer_with_is_a_503_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    with serving() as server:
        # The answer threads start on the first request: make that start fail as it does
        # when the process is out of threads.
        def cannot_start(self: threading.Thread) -> None:
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(threading.Thread, "start", cannot_start)
        status, body = get(server.port, "/healthz")
        monkeypatch.undo()
        assert (status, body) == (503, b"busy: try again\n")
    assert "Traceback" not in capfd.readouterr().err


def test_page_requests_at_once_share_one_rendering_and_never_hold_healthz_back() -> None:
    # The status page of 10,000 servers takes about a second to build. A few browser tabs
    # (or anyone who can reach the port) asking for it at once must not occupy every answer
    # thread: /healthz (Docker's health check) and /metrics must still answer.
    release = threading.Event()
    renderings: list[int] = []

    def page() -> EndpointAnswer:
        renderings.append(1)
        release.wait(5)
        return EndpointAnswer(200, b"the page", "text/html; charset=utf-8")

    with serving(page=page) as server:
        readers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        try:
            for sock in readers:
                sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            eventually(lambda: len(renderings) == 1, timeout=5, what="the page being built")
            started = time.monotonic()
            assert get(server.port, "/healthz") == (200, b"ok\n")
            assert get(server.port, "/metrics")[0] == 200
            assert time.monotonic() - started < 4  # not after the page (5 s)
            release.set()
            for sock in readers:
                sock.settimeout(5)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 ")
                assert answer.endswith(b"\r\n\r\nthe page")
            assert len(renderings) == 1  # built once for the five
        finally:
            release.set()
            for sock in readers:
                sock.close()

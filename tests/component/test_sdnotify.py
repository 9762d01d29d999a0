"""The systemd notify protocol, spoken to a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from refreshd.sdnotify import Notifier


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound in tmp_path, and the NOTIFY_SOCKET value naming it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield sock, str(path)


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in Linux's abstract namespace, and its `@name` NOTIFY_SOCKET value."""
    name = f"refreshd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        yield sock, "@" + name


def received(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


# --- Messages on the wire --------------------------------------------------------------


def test_ready_sends_ready_1(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, address = systemd_socket
    assert Notifier({"NOTIFY_SOCKET": address}).ready() is True
    assert received(sock) == b"READY=1"


def test_ready_with_status_sends_both_in_one_datagram(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, address = systemd_socket
    assert Notifier({"NOTIFY_SOCKET": address}).ready("3 servers scheduled") is True
    assert received(sock) == b"READY=1\nSTATUS=3 servers scheduled"


def test_reloading_carries_the_monotonic_clock_in_microseconds(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, address = systemd_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000
    assert Notifier({"NOTIFY_SOCKET": address}).reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000

    first, second = received(sock).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_stopping_sends_stopping_1(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, address = systemd_socket
    assert Notifier({"NOTIFY_SOCKET": address}).stopping() is True
    assert received(sock) == b"STOPPING=1"


def test_watchdog_sends_watchdog_1(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, address = systemd_socket
    notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "60000000"})
    assert notifier.watchdog() is True
    assert received(sock) == b"WATCHDOG=1"


def test_status_sends_status_line(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, address = systemd_socket
    assert Notifier({"NOTIFY_SOCKET": address}).status("next slot 02:00 east-1") is True
    assert received(sock) == b"STATUS=next slot 02:00 east-1"


def test_status_with_newlines_cannot_inject_another_assignment(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, address = systemd_socket
    assert Notifier({"NOTIFY_SOCKET": address}).status("reloaded\nREADY=1") is True
    assert received(sock) == b"STATUS=reloaded READY=1"


def test_status_text_is_sent_as_utf8(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, address = systemd_socket
    assert Notifier({"NOTIFY_SOCKET": address}).status("São Paulo: ok") is True
    assert received(sock) == "STATUS=São Paulo: ok".encode()


def test_abstract_namespace_socket_receives_messages(
    abstract_socket: tuple[socket.socket, str],
) -> None:
    sock, address = abstract_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled is True
    assert notifier.ready() is True
    assert received(sock) == b"READY=1"


def test_environ_defaults_to_os_environ(
    systemd_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = systemd_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert Notifier().stopping() is True
    assert received(sock) == b"STOPPING=1"


def test_sends_from_many_threads_at_once_each_arrive_whole(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    # Eight senders, released together; eight stays under the kernel's default queue of
    # ten datagrams (net.unix.max_dgram_qlen), which nobody drains until they are done.
    sock, address = systemd_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    senders = 8
    start = threading.Barrier(senders)
    results: dict[int, bool] = {}

    def send(n: int) -> None:
        start.wait()
        results[n] = notifier.status(f"sender {n}")

    workers = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert results == dict.fromkeys(range(senders), True)
    messages = sorted(received(sock) for _ in range(senders))
    assert messages == sorted(f"STATUS=sender {n}".encode() for n in range(senders))


# --- The watchdog --------------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    _, address = systemd_socket
    notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "60000000"})
    assert notifier.watchdog_interval == 30.0


def test_watchdog_pid_of_this_process_keeps_the_watchdog(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    _, address = systemd_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval == 1.5


def test_watchdog_pid_of_another_process_disables_the_watchdog(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, address = systemd_socket
    other_pid = str(os.getppid())
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": other_pid}
    notifier = Notifier(env)

    assert notifier.watchdog_interval is None
    assert notifier.watchdog() is False
    assert nothing_waiting(sock)


def test_no_watchdog_usec_means_no_watchdog(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, address = systemd_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.watchdog_interval is None
    assert notifier.watchdog() is False
    assert nothing_waiting(sock)


@pytest.mark.parametrize("value", ["", "0", "-5", "soon", "1.5"])
def test_unusable_watchdog_usec_means_no_watchdog(
    systemd_socket: tuple[socket.socket, str], value: str
) -> None:
    _, address = systemd_socket
    assert Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": value}).watchdog_interval is None


def test_watchdog_without_notify_socket_has_no_interval() -> None:
    # Pings could not be delivered, so there is no period to keep.
    assert Notifier({"WATCHDOG_USEC": "60000000"}).watchdog_interval is None


# --- Outside systemd and failures ------------------------------------------------------


def test_without_notify_socket_everything_returns_false() -> None:
    notifier = Notifier({})
    assert notifier.enabled is False
    assert notifier.watchdog_interval is None
    assert notifier.ready() is False
    assert notifier.ready("status") is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    assert notifier.watchdog() is False
    assert notifier.status("status") is False


@pytest.mark.parametrize("value", ["", "@", "relative/notify", "vsock:2:1234"])
def test_unusable_notify_socket_values_disable_the_notifier(value: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": value})
    assert notifier.enabled is False
    assert notifier.ready() is False


def test_socket_path_that_does_not_exist_returns_false(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "60000000"}
    notifier = Notifier(env)
    assert notifier.enabled is True
    assert notifier.ready() is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    assert notifier.watchdog() is False
    assert notifier.status("x") is False


def test_abstract_name_nobody_listens_on_returns_false() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": f"@refreshd-test-absent-{uuid.uuid4().hex}"})
    assert notifier.ready() is False


def test_path_that_is_not_a_socket_returns_false(tmp_path: Path) -> None:
    plain_file = tmp_path / "notify"
    plain_file.write_text("")
    assert Notifier({"NOTIFY_SOCKET": str(plain_file)}).ready() is False


@pytest.mark.timeout(20)
def test_full_systemd_queue_fails_the_send_instead_of_blocking(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    # Nobody reads the socket, so its queue fills up; a blocking send would hang here.
    _, address = systemd_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    started = time.monotonic()
    results = [notifier.status("x" * 1024) for _ in range(5_000)]
    assert False in results
    assert time.monotonic() - started < 10

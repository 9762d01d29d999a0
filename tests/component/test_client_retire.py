"""A client a reload replaced: its calls in flight finish on it, then it lets go of its
sockets and its deadline thread (issue 12, item 12: 300 reloads took the daemon from 12
to 217 file descriptors)."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from refreshd.client import Client, RawAnswer
from refreshd.simulator import Simulator
from tests.support.waiting import eventually

PARAMS = {
    "function": "server_refresh",
    "stage": "REFRESH",
    "user": "refreshd",
    "pass": "demo-pass-123",
    "source": "test",
}


def connections_to(sim: Simulator) -> int:
    """Established TCP connections whose far end is the simulator: the client's side (the
    simulator runs in this process too, so counting file descriptors would count both)."""
    port = f"{urlsplit(sim.url).port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(row[2].endswith(f":{port}") and row[3] == "01" for row in rows)


def deadline_threads() -> int:
    return sum(thread.name == "deadline" for thread in threading.enumerate())


def test_a_retired_idle_client_lets_go_of_its_socket_and_thread(simulator: Simulator) -> None:
    threads = deadline_threads()
    client = Client(timeout=2)
    assert client.call(simulator.api_url, PARAMS).status == 200
    assert connections_to(simulator) == 1  # the kept-alive connection
    assert deadline_threads() == threads + 1

    client.retire()

    assert connections_to(simulator) == 0
    eventually(lambda: deadline_threads() == threads, timeout=2, what="the reaper ended")


def test_a_retired_client_finishes_its_call_in_flight_then_lets_go(simulator: Simulator) -> None:
    simulator.set_fault("latency", latency=1.0)
    threads = deadline_threads()
    client = Client(timeout=5)
    answers: list[RawAnswer] = []
    call = threading.Thread(target=lambda: answers.append(client.call(simulator.api_url, PARAMS)))
    call.start()
    eventually(lambda: simulator.stats()["requests"], timeout=5, what="the call on the wire")

    client.retire()
    assert connections_to(simulator) == 1  # not pulled from under the call

    call.join(10)
    assert answers[0].status == 200
    assert answers[0].body is not None
    assert answers[0].body.startswith("SUCCESS")
    assert connections_to(simulator) == 0
    eventually(lambda: deadline_threads() == threads, timeout=2, what="the reaper ended")


def test_a_call_that_took_the_client_just_before_it_was_retired_still_works(
    simulator: Simulator,
) -> None:
    threads = deadline_threads()
    client = Client(timeout=2)
    client.retire()

    assert client.call(simulator.api_url, PARAMS).status == 200

    assert connections_to(simulator) == 0
    eventually(lambda: deadline_threads() == threads, timeout=2, what="the reaper ended")

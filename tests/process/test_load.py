"""Load on the real daemon: 2,000 servers due within one minute against a VICIdial that takes
50 ms per answer. Every server is refreshed exactly once, inside its window, and never more
than max_concurrency calls are in flight.

The window opened OPENED_AGO seconds before the daemon starts: the servers whose spread offset
has passed (about 88 %) are all caught up at once, a burst, and the others fall due one by one
over the rest of the 50 s spread. Both paths run, and the test takes about 8 s instead of 60:
the burst drains in SERVERS x LATENCY / MAX_CONCURRENCY = 6.25 s, about when the last falls
due."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from refreshd.simulator import SimUser
from tests.support.config import instant, window_from_now
from tests.support.fleet import PASSWORD, Fleet, open_fleet, report
from tests.support.simulator import api_path
from tests.support.waiting import holds_for

SERVERS = 2000
MAX_CONCURRENCY = 16
LATENCY = 0.05  # seconds the simulator adds to every answer: the 16 calls in flight bind
SPREAD = 50  # seconds: every server is due within the first 50 s of the window
OPENED_AGO = 40  # so that runs fall due after the daemon's start (3 to 8 s here)
# Eight logins, as eight clusters would have: refreshd lets at most 4 calls per login be in
# flight (policy.MAX_LOGINS_IN_FLIGHT), so with one login max_concurrency would never bind.
LOGINS = 8


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with open_fleet(tmp_path, [SimUser(f"load-{n}", PASSWORD) for n in range(LOGINS)]) as each:
        yield each


@pytest.mark.slow
def test_two_thousand_servers_due_within_a_minute_are_each_refreshed_once_within_the_limit(
    fleet: Fleet,
) -> None:
    sim = fleet.sim
    sim.set_fault("latency", latency=LATENCY)
    window = window_from_now(-OPENED_AGO, 600)
    fleet.write(
        [fleet.server(i, window, credentials=f"login{i % LOGINS}") for i in range(SERVERS)],
        credentials={
            f"login{n}": {"user": f"load-{n}", "password_env": "REL_MAIN_PASSWORD"}
            for n in range(LOGINS)
        },
        daemon={"max_concurrency": MAX_CONCURRENCY, "spread": f"{SPREAD}s"},
        client={"timeout": "10s"},
    )
    started = time.monotonic()
    daemon = fleet.start()
    (up,) = daemon.wait_for("daemon.started", timeout=60)
    ready = time.monotonic() - started

    daemon.wait_for("refresh.succeeded", count=SERVERS, timeout=SPREAD + 20)
    holds_for(
        lambda: max(sim.stats()["requests"].values()) <= 1,
        seconds=1,
        what="no server refreshed twice",
    )

    stats = sim.stats()
    counts = [stats["requests"].get(api_path(i), 0) for i in range(SERVERS)]
    assert counts == [1] * SERVERS, [i for i, n in enumerate(counts) if n != 1][:20]
    assert stats["peak_in_flight"] <= MAX_CONCURRENCY
    assert stats["logins"]["failed"] == 0
    succeeded = daemon.matching("refresh.succeeded")
    assert len(succeeded) == SERVERS
    assert daemon.matching("refresh.retrying") == []
    # Each call started at or after its due (window start + the server's spread offset) and
    # inside the window; for servers due after the start, how late is the queueing delay.
    called = {call["path"]: call["t"] for call in sim.calls()}
    began = instant(up["timestamp"]).timestamp()
    lateness = []
    for line in succeeded:
        due = instant(line.get("due", line["slot"])).timestamp()
        at = called[api_path(int(line["server"][1:]))]
        assert at >= due - 0.01, line
        if due > began:
            lateness.append(at - due)
    slot_start = instant(succeeded[0]["slot"]).timestamp()
    assert max(called.values()) < slot_start + 600
    fleet.audit(daemon)
    lateness.sort()
    report(
        "load",
        servers=SERVERS,
        max_concurrency=MAX_CONCURRENCY,
        latency_s=LATENCY,
        spread_s=SPREAD,
        start_to_ready_s=round(ready, 1),
        caught_up_at_start=SERVERS - len(lateness),
        peak_in_flight=stats["peak_in_flight"],
        # None where the daemon took so long to start that every run was a catch-up.
        lateness_p50_s=round(statistics.median(lateness), 3) if lateness else None,
        lateness_p99_s=round(lateness[int(len(lateness) * 0.99)], 3) if lateness else None,
        lateness_max_s=round(lateness[-1], 3) if lateness else None,
        last_call_after_start_s=round(max(called.values()) - began, 1),
    )

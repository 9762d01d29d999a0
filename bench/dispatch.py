"""1. Dispatch: 1,000 servers due at the same instant, the simulator adding 20 ms per call.

refreshd (max_concurrency 16 and 64) against what operators would otherwise run, on the
same simulator and URLs: `xargs -P 16 curl` and a serial `curl` loop (cron + curl).
The clock runs from the due instant (refreshd) or the launch (curl) to the last answer,
read from the simulator's call log (its `t` is taken after the added latency, when it
answers), so every contender is timed by the same clock at the same place.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime

from common import (
    PASSWORD,
    USER,
    Daemon,
    SimProcess,
    api_url,
    fleet,
    parse_time,
    save,
    window_from_now,
    window_start,
    work_dir,
    write_config,
)

from refreshd.core.policy import MAX_LOGINS_IN_FLIGHT

SERVERS = 1000
USERS = 16  # the second fleet spreads the same servers over 16 API users
LATENCY = 0.020
START_IN = 6.0  # seconds from writing the config to the window's start (start-up is ~1 s)

# The POST form refreshd sends (refreshd.core.vicidial.refresh_params), word for word.
CURL = [
    "curl",
    "-s",
    "-o",
    "/dev/null",
    "-d",
    "function=server_refresh",
    "-d",
    "stage=REFRESH",
    "-d",
    f"user={USER}",
    "-d",
    f"pass={PASSWORD}",
    "-d",
    "source=refreshd",
]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _last_answer(sim: SimProcess, expected: int) -> tuple[float, float, int]:
    """When the first call arrived and when the last was answered (epoch s; `t` is when
    the PHP ran, after the simulated latency), and how many server_refresh calls succeeded."""
    calls = [c for c in sim.calls() if c["answer_kind"] == "success"]
    if len(calls) != expected:
        raise SystemExit(f"expected {expected} successful calls, the simulator saw {len(calls)}")
    return min(c["received"] for c in calls), max(c["t"] for c in calls), len(calls)


def run_refreshd(sim: SimProcess, concurrency: int, users: int) -> dict[str, float]:
    sim.reset()
    directory = work_dir(f"dispatch-{concurrency}")
    window = window_from_now(START_IN, 600)
    due = window_start(window)
    servers = fleet(SERVERS, sim.url, windows=[window], users=users)
    config = write_config(directory, servers, max_concurrency=concurrency, users=users)
    with Daemon(config) as daemon:
        ready = daemon.wait_ready()
        if datetime.now(UTC) >= due:
            raise SystemExit(f"start-up ({ready:.1f} s) ran past the due instant; raise START_IN")
        cpu_before = daemon.cpu_seconds()
        deadline = time.monotonic() + START_IN + 120
        while sim.refreshes() < SERVERS:
            if time.monotonic() > deadline:
                raise SystemExit(f"refreshd: only {sim.refreshes()} of {SERVERS} refreshes")
            time.sleep(0.1)
        time.sleep(0.5)  # the last outcomes are being recorded
        cpu = daemon.cpu_seconds() - cpu_before
        recorded = daemon.events("refresh.succeeded")
        peak = sim.stats()["peak_in_flight"]
        first, last, _ = _last_answer(sim, SERVERS)
    last_recorded = max(parse_time(e["timestamp"]) for e in recorded)
    shutil.rmtree(directory, ignore_errors=True)
    start = due.timestamp()
    return {
        "wall_s": last - start,
        "first_call_lag_ms": (first - start) * 1000,
        "last_recorded_s": last_recorded.timestamp() - start,
        "cpu_s": cpu,
        "peak_in_flight": peak,
        "recorded": len(recorded),
    }


def run_curl(sim: SimProcess, parallel: int | None) -> dict[str, float]:
    """`xargs -P N curl ...` over the URL list, or (parallel=None) a serial shell loop."""
    sim.reset()
    directory = work_dir("dispatch-curl")
    urls = directory / "urls.txt"
    urls.write_text("".join(api_url(sim.url, i) + "\n" for i in range(SERVERS)))
    if parallel is None:
        quoted = " ".join(CURL)
        script = f'while read -r url; do {quoted} "$url"; done < {urls}'
        argv = ["bash", "-c", script]
    else:
        argv = ["xargs", "-P", str(parallel), "-n", "1", *CURL]
    cpu_before = _children_cpu()
    start = time.time()
    with urls.open() as stdin:
        subprocess.run(argv, stdin=stdin if parallel else None, check=True)
    finished = time.time()
    cpu = _children_cpu() - cpu_before
    first, last, _ = _last_answer(sim, SERVERS)
    peak = sim.stats()["peak_in_flight"]
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "wall_s": last - start,
        "first_call_lag_ms": (first - start) * 1000,
        "last_recorded_s": finished - start,
        "cpu_s": cpu,
        "peak_in_flight": peak,
    }


def main() -> int:
    if shutil.which("curl") is None:
        raise SystemExit("curl is missing: make bench installs it (apt-get install curl)")
    print(f"== 1. dispatch: {SERVERS} servers due at once, simulator +{LATENCY * 1000:.0f} ms/call")
    results: dict[str, dict[str, float]] = {}
    with SimProcess(users=USERS) as sim:
        sim.latency(LATENCY)
        # (name, run, calls in flight at most): one API user is what most operators have;
        # refreshd then keeps MAX_LOGINS_IN_FLIGHT calls in flight whatever max_concurrency.
        cap = MAX_LOGINS_IN_FLIGHT
        contenders = [
            ("refreshd 16, 1 API user", lambda: run_refreshd(sim, 16, 1), min(16, cap)),
            ("refreshd 64, 1 API user", lambda: run_refreshd(sim, 64, 1), min(64, cap)),
            (
                f"refreshd 16, {USERS} API users",
                lambda: run_refreshd(sim, 16, USERS),
                min(16, cap * USERS),
            ),
            (
                f"refreshd 64, {USERS} API users",
                lambda: run_refreshd(sim, 64, USERS),
                min(64, cap * USERS),
            ),
            ("xargs -P 16 curl", lambda: run_curl(sim, 16), 16),
            ("xargs -P 64 curl", lambda: run_curl(sim, 64), 64),
            ("serial curl loop (cron + curl)", lambda: run_curl(sim, None), 1),
        ]
        for name, run, width in contenders:
            result = run()
            result["floor_s"] = SERVERS * LATENCY / width
            results[name] = result
            print(
                f"  {name:31} {result['wall_s']:7.3f} s to the last answer"
                f" (floor {result['floor_s']:.3f} s;"
                f" first call +{result['first_call_lag_ms']:.0f} ms;"
                f" done/recorded {result['last_recorded_s']:.3f} s; CPU {result['cpu_s']:.2f} s;"
                f" peak in flight {result['peak_in_flight']})",
                flush=True,
            )
    serial = results["serial curl loop (cron + curl)"]["wall_s"]
    xargs = results["xargs -P 16 curl"]["wall_s"]
    print("  ratios: wall time / xargs -P 16 curl, and speed-up over the serial curl loop")
    for name, result in results.items():
        result["vs_xargs16"] = result["wall_s"] / xargs
        result["speedup_vs_serial"] = serial / result["wall_s"]
        print(
            f"    {name:31} {result['vs_xargs16']:6.2f}x the time of xargs -P 16;"
            f" {result['speedup_vs_serial']:6.1f}x faster than serial"
        )
    save(
        "dispatch",
        {
            "servers": SERVERS,
            "latency_s": LATENCY,
            "max_logins_in_flight": MAX_LOGINS_IN_FLIGHT,
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

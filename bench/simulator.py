"""6. The simulator's own throughput, to show it is not what limits the other figures.

curl (C, one process, keep-alive connections, `--parallel`) posts the refresh form to the
simulator as fast as it can: with no added latency (the simulator's ceiling in calls per
second) and with the 20 ms of bench/dispatch.py at 16 and 64 connections (how close it
comes to connections / 20 ms). Compared, in the same run, with the fastest rate any
other benchmark asks of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from common import RESULTS, SimProcess, cpu_seconds, save
from dispatch import CURL

CALLS = 3000


def _blast(sim: SimProcess, parallel: int, calls: int) -> dict[str, float]:
    sim.reset()
    urls = f"{sim.url}/s[0-{calls - 1}]/vicidial/non_agent_api.php"
    cpu0 = cpu_seconds(sim.proc.pid)
    start = time.monotonic()
    subprocess.run(
        [*CURL, "--parallel", "--parallel-max", str(parallel), urls],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # --parallel draws a progress meter despite -s
        check=True,
    )
    elapsed = time.monotonic() - start
    stats = sim.stats()
    if stats["refreshes"] != calls:
        raise SystemExit(f"the simulator answered {stats['refreshes']} of {calls} refreshes")
    return {
        "calls": calls,
        "elapsed_s": elapsed,
        "per_s": calls / elapsed,
        "cpu_share": (cpu_seconds(sim.proc.pid) - cpu0) / elapsed,
        "peak_in_flight": stats["peak_in_flight"],
    }


def _demands() -> dict[str, tuple[float, str]]:
    """The call rates the other benchmarks drove (from their results files), each with the
    simulator setting it compares with: +20 ms calls (dispatch) or none (soak)."""
    found: dict[str, tuple[float, str]] = {}
    try:
        dispatch = json.loads((RESULTS / "dispatch.json").read_text())
        for name, r in dispatch["results"].items():
            rate = dispatch["servers"] / r["wall_s"]
            found[f"dispatch: {name}"] = (rate, "+20 ms, 64 connections")
    except (OSError, KeyError, ValueError):
        pass
    try:
        soak = json.loads((RESULTS / "soak.json").read_text())
        found["soak: refreshd"] = (soak["rate_per_s"], "no latency, 16 connections")
    except (OSError, KeyError, ValueError):
        pass
    return found


def main() -> int:
    print("== 6. the simulator's own throughput (curl --parallel, keep-alive)")
    results: dict[str, dict[str, float]] = {}
    with SimProcess() as sim:
        results["no latency, 16 connections"] = _blast(sim, 16, CALLS)
        sim.latency(0.020)
        results["+20 ms, 16 connections"] = _blast(sim, 16, 1000)
        results["+20 ms, 64 connections"] = _blast(sim, 64, 1000)
    for name, r in results.items():
        ideal = ""
        if "20 ms" in name:
            connections = int(name.split(", ")[1].split()[0])
            ideal = (
                f" (ideal {connections / 0.020:.0f}/s: {r['per_s'] / (connections / 0.020):.0%})"
            )
        print(
            f"  {name:27} {r['per_s']:7.0f} calls/s{ideal}; simulator CPU {r['cpu_share']:.0%} of"
            f" a core; peak in flight {r['peak_in_flight']:.0f}"
        )
    demands = {}
    for name, (rate, setting) in _demands().items():
        share = rate / results[setting]["per_s"]
        demands[name] = {"rate_per_s": rate, "compared_with": setting, "share": share}
        print(f"  {name:38} drove {rate:5.0f} calls/s = {share:4.0%} of what it serves ({setting})")
    save("simulator", {"results": results, "demands": demands})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""5. Soak: 50,000 refreshes through one daemon process: RSS growth under 10 % after
warm-up, open file descriptors flat.

400 servers refresh every second inside back-to-back two-minute windows, with 4 API
users (so the per-user cap on logins in flight is not what limits the rate). A daemon
that cannot keep up catches up at once after each outcome, so the run goes as fast as
the daemon can, and the achieved rate is a figure of its own. RSS (VmRSS), open fds and
threads are read from /proc every 2 s; the baseline is the same process right after
warm-up.

Two-minute windows, not one long one: refreshd's cost per refresh grows with the runs
in a slot (window length / `every`). The last phase measures that on its own: the same
fleet in one-hour windows (3,600 runs per slot) for PATHOLOGY_SECONDS.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    Daemon,
    SimProcess,
    cpu_seconds,
    fleet,
    save,
    verdict,
    window_from_now,
    window_start,
    work_dir,
    write_config,
)

TOTAL = 50_000
WARM_UP = 5_000
SERVERS = 400
USERS = 4
MAX_CONCURRENCY = 16  # the pool keeps up to this many connections
TIME_LIMIT = 330.0  # seconds of refreshing at most; the count reached is reported
SAMPLE_EVERY = 2.0
TARGET_GROWTH = 0.10
SLOT = 120  # seconds per window: SLOT runs per slot at every = 1 s
SLOTS = 8  # back-to-back windows, 16 minutes: longer than TIME_LIMIT
PATHOLOGY_SECONDS = 20.0


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MB) per refresh."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


def _fd_kinds(pid: int) -> dict[str, int]:
    """Open fds by kind: socket, pipe, anon_inode, or the file's path."""
    kinds: Counter[str] = Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        kinds[target.split(":", 1)[0] if ":" in target else Path(target).name] += 1
    return dict(kinds)


def _start(sim: SimProcess, windows: list[str], name: str) -> Daemon:
    servers = fleet(SERVERS, sim.url, windows=windows, users=USERS, every="1s")
    config = write_config(work_dir(name), servers, max_concurrency=MAX_CONCURRENCY, users=USERS)
    daemon = Daemon(config)
    daemon.wait_ready()
    opens = window_start(windows[0])
    time.sleep(max(0.0, (opens - datetime.now(UTC)).total_seconds()))
    return daemon


def _finish(daemon: Daemon) -> int:
    """Stop the daemon; the number of failed or retried calls it logged."""
    daemon.stop()
    failed = len(daemon.events("refresh.failed")) + len(daemon.events("refresh.retrying"))
    shutil.rmtree(daemon.config.parent, ignore_errors=True)
    return failed


def soak(sim: SimProcess) -> dict[str, Any]:
    now = datetime.now(UTC)
    windows = [window_from_now(5 + k * SLOT, SLOT - 1, now=now) for k in range(SLOTS)]
    sim.reset()
    daemon = _start(sim, windows, "soak")
    samples: list[dict[str, float]] = []
    try:
        started = time.monotonic()
        cpu0, sim_cpu0 = daemon.cpu_seconds(), cpu_seconds(sim.proc.pid)
        done = 0
        while done < TOTAL and time.monotonic() - started < TIME_LIMIT:
            time.sleep(SAMPLE_EVERY)
            done = sim.refreshes()
            kinds = _fd_kinds(daemon.pid)
            samples.append(
                {
                    "t": time.monotonic() - started,
                    "refreshes": done,
                    "rss_mb": daemon.rss_mb(),
                    "fds": sum(kinds.values()),
                    "sockets": kinds.get("socket", 0),
                    "threads": daemon.threads(),
                }
            )
        elapsed = time.monotonic() - started
        cpu = daemon.cpu_seconds() - cpu0
        sim_cpu = cpu_seconds(sim.proc.pid) - sim_cpu0
        fd_kinds = _fd_kinds(daemon.pid)
    finally:
        failed = _finish(daemon)
    warm = next(s for s in samples if s["refreshes"] >= min(WARM_UP, done))
    after = [s for s in samples if s["refreshes"] >= warm["refreshes"]]
    final = samples[-1]
    fds = [int(s["fds"]) for s in after]
    # The connection pool keeps up to max_concurrency sockets and fills as calls overlap,
    # so "flat" means: files (state, log) constant, sockets never past the pool plus the
    # metrics listener, and no fd more at the end than half-way.
    second_half = [int(s["fds"]) for s in samples if s["refreshes"] >= done / 2]
    files = {int(s["fds"] - s["sockets"]) for s in after}
    sockets_max = max(int(s["sockets"]) for s in after)
    slope = _slope([(int(s["refreshes"]), s["rss_mb"]) for s in after]) if len(after) > 2 else 0.0
    growth = (final["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"]
    return {
        "target": TOTAL,
        "refreshes": done,
        "elapsed_s": elapsed,
        "rate_per_s": done / elapsed,
        "failed_or_retried": failed,
        "cpu_s": cpu,
        "cpu_ms_per_refresh": cpu / done * 1000,
        "sim_cpu_share": sim_cpu / elapsed,
        "warm_refreshes": warm["refreshes"],
        "rss_warm_mb": warm["rss_mb"],
        "rss_final_mb": final["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in after),
        "growth": growth,
        "trend_kb_per_1000": slope * 1000 * 1024,
        "fds_first": fds[0],
        "fds_half": second_half[0],
        "fds_min": min(fds),
        "fds_max": max(fds),
        "fds_final": fds[-1],
        "fd_kinds": fd_kinds,
        "threads": final["threads"],
        "growth_met": growth < TARGET_GROWTH,
        "files_open": sorted(files),
        "sockets_max": sockets_max,
        "sockets_bound": MAX_CONCURRENCY + 1,
        "fds_met": len(files) == 1
        and sockets_max <= MAX_CONCURRENCY + 1
        and second_half[-1] <= max(second_half[0], MAX_CONCURRENCY + 1 + min(files)),
        "samples": samples,
    }


def long_slots(sim: SimProcess) -> dict[str, float]:
    """The same fleet in one-hour windows: 3,600 runs per slot."""
    sim.reset()
    daemon = _start(sim, [window_from_now(3, 3600)], "soak-long")
    try:
        time.sleep(2.0)
        n0, cpu0, t0 = sim.refreshes(), daemon.cpu_seconds(), time.monotonic()
        time.sleep(PATHOLOGY_SECONDS)
        n1, cpu1, t1 = sim.refreshes(), daemon.cpu_seconds(), time.monotonic()
    finally:
        _finish(daemon)
    return {
        "rate_per_s": (n1 - n0) / (t1 - t0),
        "cpu_ms_per_refresh": (cpu1 - cpu0) / (n1 - n0) * 1000,
    }


def main() -> int:
    print(f"== 5. soak: {TOTAL} refreshes, {SERVERS} servers every 1 s, one daemon process")
    with SimProcess(users=USERS) as sim:
        r = soak(sim)
        long = long_slots(sim)
    print(
        f"  {r['refreshes']} refreshes in {r['elapsed_s']:.0f} s = {r['rate_per_s']:.0f}/s"
        f" ({r['failed_or_retried']} failed or retried); daemon CPU {r['cpu_s']:.1f} s ="
        f" {r['cpu_ms_per_refresh']:.2f} ms per refresh;"
        f" simulator {r['sim_cpu_share']:.0%} of a core"
    )
    print(
        f"  RSS after warm-up ({r['warm_refreshes']:.0f} refreshes): {r['rss_warm_mb']:.1f} MB;"
        f" at the end {r['rss_final_mb']:.1f} MB; max {r['rss_max_mb']:.1f} MB;"
        f" growth {r['growth']:+.1%} (trend {r['trend_kb_per_1000']:+.1f} kB per 1,000 refreshes)"
    )
    print(
        f"  open fds after warm-up: first {r['fds_first']}, min {r['fds_min']}, max {r['fds_max']};"
        f" at half-way {r['fds_half']}, at the end {r['fds_final']} ({r['fd_kinds']});"
        f" threads {r['threads']:.0f}"
    )
    print(
        f"  target RSS growth < {TARGET_GROWTH:.0%}: {verdict(bool(r['growth_met']))};"
        f" fds flat (files {r['files_open']}, sockets at most {r['sockets_max']} <="
        f" pool {MAX_CONCURRENCY} + listener): {verdict(bool(r['fds_met']))}"
    )
    if r["refreshes"] < TOTAL:
        extrapolated = r["trend_kb_per_1000"] * (TOTAL - r["warm_refreshes"]) / 1000 / 1024
        r["extrapolated_growth"] = extrapolated / r["rss_warm_mb"]
        print(
            f"  note: {r['refreshes']} of {TOTAL} refreshes within {TIME_LIMIT:.0f} s; at the"
            f" measured trend RSS would grow {extrapolated:+.1f} MB"
            f" ({r['extrapolated_growth']:+.1%}) by {TOTAL}"
        )
    ratio = long["cpu_ms_per_refresh"] / r["cpu_ms_per_refresh"]
    print(
        f"  the same fleet in one-hour windows (3,600 runs per slot): {long['rate_per_s']:.0f}/s,"
        f" {long['cpu_ms_per_refresh']:.2f} ms CPU per refresh ="
        f" {ratio:.1f}x the two-minute windows"
    )
    save("soak", {**r, "long_slots": long, "long_slots_cpu_ratio": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""3. Idle cost: the daemon with 10,000 servers configured and nothing due, for 60 s: CPU
seconds (from /proc/PID/stat) and RSS (/proc/PID/status). Targets: under 0.5 % of one
core; RSS under 100 MB.

The baseline, idle over the same 60 s: the same daemon with one server (what the
process costs before any server), so the ratio shows what 10,000 servers add.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from common import (
    FLEET_BLACKOUTS,
    Daemon,
    fleet,
    realistic_fleet,
    save,
    verdict,
    work_dir,
    write_config,
)

SERVERS = 10_000
IDLE_SECONDS = 60.0
SETTLE_SECONDS = 5.0
TARGET_CPU = 0.005  # of one core
TARGET_RSS_MB = 100.0
NOWHERE = "http://127.0.0.1:9"  # nothing is due, so nothing is ever called


def _switches(pid: int) -> int:
    """Context switches of all the process's threads: how often it wakes up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def main() -> int:
    print(f"== 3. idle cost: {SERVERS} servers, nothing due, {IDLE_SECONDS:.0f} s")
    big_dir, small_dir = work_dir("idle-10000"), work_dir("idle-1")
    big = Daemon(
        write_config(big_dir, realistic_fleet(SERVERS, NOWHERE), blackouts=FLEET_BLACKOUTS)
    )
    small = Daemon(write_config(small_dir, fleet(1, NOWHERE, windows=realistic_windows())))
    results = {}
    try:
        ready = {"10000": big.wait_ready(), "1": small.wait_ready()}
        time.sleep(SETTLE_SECONDS)
        daemons = {"10000": big, "1": small}
        before = {
            k: (d.cpu_seconds(), _switches(d.pid), time.monotonic()) for k, d in daemons.items()
        }
        time.sleep(IDLE_SECONDS)
        for key, daemon in daemons.items():
            cpu0, switches0, t0 = before[key]
            elapsed = time.monotonic() - t0
            cpu = daemon.cpu_seconds() - cpu0
            results[key] = {
                "ready_s": ready[key],
                "cpu_s": cpu,
                "elapsed_s": elapsed,
                "cpu_share": cpu / elapsed,
                "wakeups_per_s": (_switches(daemon.pid) - switches0) / elapsed,
                "rss_mb": daemon.rss_mb(),
                "peak_rss_mb": daemon.status("VmHWM") / 1024,
                "threads": daemon.threads(),
                "fds": daemon.fds(),
            }
            if daemon.events("refresh.succeeded") or daemon.events("refresh.failed"):
                raise SystemExit("a refresh ran: the idle fleet was not idle")
    finally:
        big.stop()
        small.stop()
        shutil.rmtree(big_dir, ignore_errors=True)
        shutil.rmtree(small_dir, ignore_errors=True)
    for key, label in (("10000", f"{SERVERS} servers"), ("1", "1 server (baseline)")):
        r = results[key]
        print(
            f"  {label:20} CPU {r['cpu_s']:.2f} s in {r['elapsed_s']:.0f} s = {r['cpu_share']:.3%}"
            f" of a core; {r['wakeups_per_s']:.1f} thread wake-ups/s; RSS {r['rss_mb']:.1f} MB"
            f" (peak {r['peak_rss_mb']:.1f} MB); {r['threads']} threads; {r['fds']} fds"
        )
    big_r, small_r = results["10000"], results["1"]
    cpu_ok = big_r["cpu_share"] < TARGET_CPU
    rss_ok = big_r["rss_mb"] < TARGET_RSS_MB
    rss_ratio = big_r["rss_mb"] / small_r["rss_mb"]
    per_server_kb = (big_r["rss_mb"] - small_r["rss_mb"]) * 1024 / (SERVERS - 1)
    print(
        f"  ratio 10,000 / 1 server: RSS {rss_ratio:.2f}x ({per_server_kb:.1f} kB per server);"
        f" CPU {big_r['cpu_s'] / max(small_r['cpu_s'], 0.01):.2f}x"
    )
    print(f"  target CPU < {TARGET_CPU:.1%} of a core: {verdict(cpu_ok)}")
    print(f"  target RSS < {TARGET_RSS_MB:.0f} MB: {verdict(rss_ok)}")
    save(
        "idle",
        {
            "servers": SERVERS,
            "idle_s": IDLE_SECONDS,
            "results": results,
            "rss_ratio": rss_ratio,
            "per_server_kb": per_server_kb,
            "cpu_met": cpu_ok,
            "rss_met": rss_ok,
        },
    )
    return 0


def realistic_windows() -> list[str]:
    return list(realistic_fleet(1, NOWHERE)[0]["windows"])


if __name__ == "__main__":
    sys.exit(main())

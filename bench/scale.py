"""4. Scale: `check` and `plan --count 1` on 10,000 servers, and the daemon's time from
spawn to READY=1 (systemd notify) with 10,000 servers. Target: each under 3 s.

The fleet is what a large operator has: four time zones, daily, weekday and every-hour
windows, and one fleet-wide blackout (config/refreshd.example.toml's). Baselines in the
same run: `refreshd --version` (the interpreter and imports alone) and the same commands
on a one-server config; the ratio shows what 10,000 servers add. Each figure is the
median of RUNS. Every command is then profiled once with py-spy (bench/profiling.py),
so a miss comes with where its time goes.
"""

from __future__ import annotations

import resource
import shutil
import socket
import statistics
import sys
from pathlib import Path
from typing import Any

from common import (
    FLEET_BLACKOUTS,
    PYTHON,
    Daemon,
    child_env,
    realistic_fleet,
    save,
    timed,
    verdict,
    work_dir,
    write_config,
)
from profiling import Profile, profile

SERVERS = 10_000
RUNS = 3
TARGET_S = 3.0
NOWHERE = "http://127.0.0.1:9"

# Innermost frame first: the first of these found in a stack names its phase.
PHASES = {
    "_find_and_load": "imports",
    "loads (tomllib": "TOML parsing (tomllib)",
    "model_validate": "config validation (pydantic)",
    "validate_config": "config validation (pydantic)",
    "config_warnings": "config warnings",
    "credentials_fingerprint": "credentials fingerprint (pbkdf2)",
    "StateStore.": "state store reads/writes (SQLite)",
    "MetricWrapperBase": "metrics (a next-slot gauge per server)",
    "Gauge.": "metrics (a next-slot gauge per server)",
    "blackouts_between": "window arithmetic: blackouts",
    "next_fire": "window arithmetic: next slot",
    "next_runs": "window arithmetic: next slot",
    "target_of": "target_of (credentials resolved per server)",
    "server_fingerprint": "server fingerprint",
    "schedule_of": "schedule_of",
    "print": "output",
    "_print_table": "output",
    "add_job": "APScheduler",
}


def _env() -> dict[str, str]:
    return child_env()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _command(args: list[str]) -> tuple[float, float]:
    """Median wall seconds of `refreshd ARGS`, and its median CPU seconds (which other
    work on the machine does not inflate)."""
    times, cpus = [], []
    for _ in range(RUNS):
        cpu0 = _children_cpu()
        seconds, done = timed([PYTHON, "-m", "refreshd", *args], env=_env(), cwd="/")
        if done.returncode != 0:
            raise SystemExit(f"refreshd {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
        times.append(seconds)
        cpus.append(_children_cpu() - cpu0)
    return statistics.median(times), statistics.median(cpus)


def _ready(config: Path) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (wall, CPU) seconds to READY=1 on a fresh state file (first start), and on a
    restart with the state file the first start left."""
    first: list[tuple[float, float]] = []
    restart: list[tuple[float, float]] = []
    for _ in range(RUNS):
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (config.parent / name).unlink(missing_ok=True)
        for times in (first, restart):
            daemon = Daemon(config)
            try:
                wall = daemon.wait_ready()
                times.append((wall, daemon.cpu_seconds()))
            finally:
                daemon.stop()
            (config.parent / "notify.sock").unlink(missing_ok=True)
    return _medians(first), _medians(restart)


def _medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def _profile_ready(config: Path) -> Profile:
    sock_path = config.parent / "profile.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)

    def ready(_: Any) -> bool:
        try:
            return b"READY=1" in sock.recv(4096)
        except BlockingIOError:
            return False

    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (config.parent / name).unlink(missing_ok=True)
    try:
        return profile(
            ["run", "-c", str(config)],
            env={**_env(), "NOTIFY_SOCKET": str(sock_path)},
            cwd=config.parent,
            until=ready,
        )
    finally:
        sock.close()


def _show(title: str, prof: Profile, wall: float) -> dict[str, Any]:
    """Print a profile as phases and heaviest functions, scaled to the measured time."""
    phases = prof.phases(PHASES)
    total = sum(seconds for _, seconds in phases) or 1.0
    print(
        f"  profile of {title} (py-spy, shares of the main thread, times scaled to {wall:.2f} s):"
    )
    for label, seconds in phases:
        share = seconds / total
        if share >= 0.01:
            print(f"    {share:6.1%}  ~{share * wall:5.2f} s  {label}")
    print("    heaviest refreshd functions (inclusive):")
    rows = prof.table(top=14)
    for name, _, share in rows:
        print(f"    {share:6.1%}  ~{share * wall:5.2f} s  {name}")
    return {
        "phases": [(label, seconds / total) for label, seconds in phases],
        "functions": [(name, share) for name, _, share in rows],
    }


def main() -> int:
    print(f"== 4. scale: {SERVERS} servers (median of {RUNS})")
    big_dir, small_dir = work_dir("scale-10000"), work_dir("scale-1")
    big = write_config(big_dir, realistic_fleet(SERVERS, NOWHERE), blackouts=FLEET_BLACKOUTS)
    small = write_config(small_dir, realistic_fleet(1, NOWHERE), blackouts=FLEET_BLACKOUTS)
    config_bytes = big.stat().st_size
    try:
        version = _command(["--version"])[0]
        figures: dict[str, dict[str, float]] = {}
        for label, args in (("check", ["check"]), ("plan --count 1", ["plan", "--count", "1"])):
            wall, cpu = _command([*args, "-c", str(big)])
            figures[label] = {
                "10000": wall,
                "cpu": cpu,
                "1": _command([*args, "-c", str(small)])[0],
            }
        first, restart = _ready(big)
        small_first, small_restart = _ready(small)
        figures["READY=1 (first start)"] = {"10000": first[0], "cpu": first[1], "1": small_first[0]}
        figures["READY=1 (restart)"] = {
            "10000": restart[0],
            "cpu": restart[1],
            "1": small_restart[0],
        }
        print(f"  refreshd --version (interpreter + imports): {version:.2f} s")
        for label, f in figures.items():
            f["met"] = f["10000"] < TARGET_S
            print(
                f"  {label:22} {f['10000']:5.2f} s with {SERVERS} (CPU {f['cpu']:.2f} s);"
                f" {f['1']:5.2f} s with 1 ({f['10000'] / f['1']:.1f}x);"
                f" target < {TARGET_S:.0f} s: {verdict(bool(f['met']))}"
            )
        profiles = {
            "check": _show(
                "check", profile(["check", "-c", str(big)], env=_env()), figures["check"]["10000"]
            ),
            "plan --count 1": _show(
                "plan --count 1",
                profile(["plan", "--count", "1", "-c", str(big)], env=_env()),
                figures["plan --count 1"]["10000"],
            ),
            "READY=1": _show(
                "start-up to READY=1",
                _profile_ready(big),
                figures["READY=1 (first start)"]["10000"],
            ),
        }
    finally:
        shutil.rmtree(big_dir, ignore_errors=True)
        shutil.rmtree(small_dir, ignore_errors=True)
    save(
        "scale",
        {
            "servers": SERVERS,
            "runs": RUNS,
            "version_s": version,
            "figures": figures,
            "profiles": profiles,
            "config_bytes": config_bytes,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every benchmark shares: the simulator and the real daemon as child processes,
fleet configs, readings from /proc, and the results file that docs/PERFORMANCE.md is
written from. Loopback only; every wait is bounded."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
# BENCH_RESULTS: somewhere else, e.g. for a run against a patched copy (PYTHONPATH).
RESULTS = Path(os.environ.get("BENCH_RESULTS", ROOT / "bench" / "results"))
PYTHON = sys.executable

# The harness the daemon tests use: one way to write configs and windows.
sys.path.insert(0, str(ROOT))
from tests.support.config import window_from_now, write_daemon_config  # noqa: E402

__all__ = [
    "PASSWORD",
    "PYTHON",
    "ROOT",
    "USER",
    "Daemon",
    "SimProcess",
    "api_url",
    "fleet",
    "machine",
    "percentile",
    "save",
    "window_from_now",
    "work_dir",
    "write_config",
]

# The simulator's default administrator (refreshd.simulator.DEFAULT_USERS).
USER = "admin"
PASSWORD = "admin1234"
PASSWORD_ENV = "BENCH_REFRESHD_PASSWORD"


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a refreshd child: the bench password, and PYTHONPATH when set,
    to measure a patched copy of refreshd before changing the real one (children run
    outside the repository, where `python -m` would find the working tree first)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        PASSWORD_ENV: PASSWORD,
    }
    for name in ("PYTHONPATH", "PROTO_SWITCH"):
        if name in os.environ:
            env[name] = os.environ[name]
    return {**env, **(extra or {})}


def work_dir(name: str) -> Path:
    """A fresh directory for one benchmark's config and state file (on the same disk as
    a real /var/lib/refreshd would be: the state file fsyncs every outcome)."""
    return Path(tempfile.mkdtemp(prefix=f"refreshd-bench-{name}-"))


def api_url(base: str, index: int) -> str:
    """Each server its own path, so no two requests are identical (identical requests due
    together are sent once, by design)."""
    return f"{base}/s{index}/vicidial/non_agent_api.php"


def credentials_name(index: int, users: int) -> str:
    """The credentials table of server `index` when the fleet uses `users` API users."""
    return "bench" if users == 1 else f"bench{index % users:02d}"


def fleet(
    count: int, base_url: str, windows: list[str] | None = None, *, users: int = 1, **extra: Any
) -> list[dict[str, Any]]:
    """`count` servers; with `users` > 1 they take turns among that many API users (the
    simulator must know them: SimProcess(users=...))."""
    servers = []
    for i in range(count):
        server: dict[str, Any] = {
            "name": f"srv-{i:05d}",
            "api_url": api_url(base_url, i),
            "credentials": credentials_name(i, users),
        }
        if windows is not None:
            server["windows"] = windows
        server.update(extra)
        servers.append(server)
    return servers


def write_config(
    directory: Path,
    servers: list[Mapping[str, Any]],
    *,
    max_concurrency: int = 16,
    users: int = 1,
    blackouts: list[Mapping[str, Any]] | None = None,
) -> Path:
    credentials = {
        credentials_name(i, users): {"user": sim_user(i, users), "password_env": PASSWORD_ENV}
        for i in range(users)
    }
    return write_daemon_config(
        directory / "refreshd.toml",
        servers=servers,
        credentials=credentials,
        daemon={
            "state_path": str(directory / "state.db"),
            "max_concurrency": max_concurrency,
            # On, as by default: its thread is part of what the daemon costs.
            "metrics_listen": "127.0.0.1:0",
            "shutdown_grace": "5s",
        },
        client={"timeout": "10s", "source": "refreshd"},
        blackouts=blackouts,
    )


def local_window(zone: str, start_in: timedelta, length: timedelta, days: str = "") -> str:
    """A window "[DAYS ]HH:MM-HH:MM" in `zone`'s wall clock, opening `start_in` from now."""
    start = datetime.now(ZoneInfo(zone)) + start_in
    end = start + length
    times = f"{start:%H:%M}-{end:%H:%M}"
    return f"{days} {times}" if days else times


def realistic_fleet(count: int, base_url: str) -> list[dict[str, Any]]:
    """`count` servers the way a large operator has them: four time zones, daily, weekday
    and every-hour windows (all closed for the next hour, so nothing is due)."""
    zones = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata")
    servers = fleet(count, base_url)
    for i, server in enumerate(servers):
        zone = zones[i % len(zones)]
        today = datetime.now(ZoneInfo(zone)).strftime("%a").lower()
        shape = i % 3
        server["timezone"] = zone
        if shape == 0:
            server["windows"] = [local_window(zone, timedelta(hours=2), timedelta(hours=2))]
        elif shape == 1:
            server["windows"] = [
                local_window(zone, timedelta(hours=3), timedelta(hours=1), f"{today},sat,sun"),
                local_window(zone, timedelta(hours=6), timedelta(hours=1)),
            ]
        else:
            server["windows"] = [local_window(zone, timedelta(hours=4), timedelta(hours=3))]
            server["every"] = "1h"
    return servers


# A blackout for the whole fleet, as in config/refreshd.example.toml.
FLEET_BLACKOUTS = [
    {"name": "peak-season", "servers": ["*"], "windows": ["2026-12-24T00:00/2026-12-27T00:00"]}
]


def sim_user(index: int, users: int) -> str:
    return USER if users == 1 else f"bench{index % users:02d}"


class SimProcess:
    """`python -m refreshd simulator` on a free loopback port, observed through /_sim/.
    With `users` > 1 it knows that many API users (bench00..), all with PASSWORD."""

    def __init__(self, users: int = 1) -> None:
        argv = [PYTHON, "-m", "refreshd", "simulator", "--listen", "127.0.0.1:0"]
        self._dir: Path | None = None
        if users > 1:
            self._dir = work_dir("simulator")
            config = self._dir / "simulator.toml"
            config.write_text(
                f'[[users]]\nuser = "{USER}"\npassword = "{PASSWORD}"\n\n'
                + "".join(
                    f'[[users]]\nuser = "{sim_user(i, users)}"\npassword = "{PASSWORD}"\n\n'
                    for i in range(users)
                )
            )
            argv += ["--config", str(config)]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError("the simulator did not start")
        self.url: str = json.loads(first)["url"]

    def _request(self, method: str, path: str, document: Any = None) -> Any:
        data = None if document is None else json.dumps(document).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return dict(self._request("GET", "/_sim/stats"))

    def calls(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/_sim/calls"))

    def reset(self) -> None:
        self._request("POST", "/_sim/reset", {})

    def latency(self, seconds: float) -> None:
        """Every API call waits `seconds` before it is answered (0: none)."""
        if seconds:
            self._request("POST", "/_sim/faults", {"mode": "latency", "latency": seconds})
        else:
            self._request("DELETE", "/_sim/faults")

    def refreshes(self) -> int:
        return int(self.stats()["refreshes"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Daemon:
    """`python -m refreshd run` as systemd would start it (Type=notify), its JSON lines
    going to a file (as to the journal), so reading them costs the daemon nothing."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log_path = config.parent / "daemon.log"
        self._notify_path = config.parent / "notify.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self._notify_path))
        env = child_env({"NOTIFY_SOCKET": str(self._notify_path)})
        self._log = self.log_path.open("w")
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "refreshd", "run", "-c", str(config)],
            cwd=config.parent,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds from spawn to READY=1 on the notify socket."""
        deadline = self.spawned + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"no READY=1 from the daemon; see {self.log_path}")
            self._notify.settimeout(min(left, 1.0))
            try:
                message = self._notify.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in message.split("\n"):
                return time.monotonic() - self.spawned

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def status(self, key: str) -> int:
        """A kB figure from /proc/PID/status, e.g. VmRSS or VmHWM."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def rss_mb(self) -> float:
        return self.status("VmRSS") / 1024

    def threads(self) -> int:
        return self.status("Threads")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self._log.close()
        self._notify.close()
        return code

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    """The 1-minute load average now: other work on the machine skews every figure."""
    return Path("/proc/loadavg").read_text().split()[0]


_LOAD_AT_START = load_average()


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def window_start(window: str, *, now: datetime | None = None) -> datetime:
    """The next UTC instant of a daily "HH:MM:SS-..." window's start (from window_from_now)."""
    now = now or datetime.now(UTC)
    hh, mm, ss = (int(part) for part in window.split("-")[0].split(":"))
    start = now.replace(hour=hh, minute=mm, second=ss, microsecond=0)
    return start if start > now - timedelta(hours=12) else start + timedelta(days=1)


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def timed(argv: list[str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of one command, and its result."""
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    return time.monotonic() - start, done


def machine() -> dict[str, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{int(memory) / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def save(name: str, result: Mapping[str, Any]) -> None:
    """Keep one benchmark's figures for bench/report.py (which writes PERFORMANCE.md),
    with what else was running (the load average) and whether refreshd was patched."""
    RESULTS.mkdir(exist_ok=True)
    document = {
        **result,
        "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": {"start": _LOAD_AT_START, "end": load_average()},
        "refreshd_from": os.environ.get("PYTHONPATH") or _tree(),
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")


def _tree() -> str:
    """The commit the working tree is at, and whether refreshd/ has changes on top."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "refreshd")
    return f"the working tree at {git('rev-parse', '--short', 'HEAD')}" + (
        " with uncommitted changes in refreshd/" if dirty else ""
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"

"""A fleet: one simulator, the real daemons run against it in one test, their configs, and
the secrets audit of everything they show. Used by the adversarial, crash and load tests."""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from refreshd.simulator import SimServer, Simulator, SimUser
from tests.support.config import write_daemon_config
from tests.support.daemon import DaemonProcess, assert_json_lines_only, clean_env, run_refreshd
from tests.support.repo import REPO
from tests.support.simulator import api_path, running_simulator

# Passwords with '-' and '_' (the only punctuation VICIdial keeps), so that the raw, the
# URL-encoded and the filtered forms are all searched for.
USER = "rel-api_user"
PASSWORD = "Rel-i_ab1e-Pa55_w0rd"
SECOND_USER = "rel-second_user"
SECOND_PASSWORD = "Sec0nd-pa55_w0rd-X"
WRONG_PASSWORD = "Wr0ng-pa55_Word-9"
NOAPI_USER, NOAPI_PASSWORD = "rel-noapi_user", "No-api_pa55-w0rd"
SECRETS = (PASSWORD, SECOND_PASSWORD, WRONG_PASSWORD, NOAPI_PASSWORD)
PASSWORD_ENV = {
    "REL_MAIN_PASSWORD": PASSWORD,
    "REL_SECOND_PASSWORD": SECOND_PASSWORD,
    "REL_WRONG_PASSWORD": WRONG_PASSWORD,
    "REL_NOAPI_PASSWORD": NOAPI_PASSWORD,
}
MAIN = {"main": {"user": USER, "password_env": "REL_MAIN_PASSWORD"}}
SIM_SERVERS = [SimServer("10.0.0.11"), SimServer("10.0.0.12")]

# Figures for docs/RELIABILITY.md: `pytest -s` prints one `RELIABILITY {...}` line per run
# (conftest.py prints the totals at the end of the session).
FIGURES: Counter[str] = Counter()


def report(scenario: str, **figures: Any) -> None:
    print("RELIABILITY " + json.dumps({"scenario": scenario, **figures}, default=str))


def sim_users() -> list[SimUser]:
    return [
        SimUser(USER, PASSWORD, user_level=8, api_functions=("server_refresh",)),
        SimUser(SECOND_USER, SECOND_PASSWORD, user_level=9),
        SimUser(NOAPI_USER, NOAPI_PASSWORD, user_level=8, api_access=False),
    ]


def secret_forms(secret: str) -> set[str]:
    """The password as typed, in either letter case, URL-encoded both ways, as HTML
    entities, and as VICIdial filters it."""
    return {
        secret,
        secret.upper(),
        secret.lower(),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        "".join(f"&#{ord(char)};" for char in secret),
        re.sub(r"[^0-9A-Za-z_-]", "", secret),
    }


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


_VIEWS = """
import sys
from refreshd.cli import main
config = sys.argv[1]
codes = [
    main(["status", "-c", config]),
    main(["status", "--json", "-c", config]),
    main(["history", "--limit", "100000", "-c", config]),
    main(["history", "--json", "--limit", "100000", "-c", config]),
]
print("views:", codes)
"""


class Fleet:
    """A simulator on loopback plus the real daemons run against it in one test."""

    def __init__(self, tmp_path: Path, sim: Simulator) -> None:
        self.tmp_path = tmp_path
        self.sim = sim
        self.config_path = tmp_path / "refreshd.toml"
        self.state_path = tmp_path / "state" / "state.db"
        self.daemons: list[DaemonProcess] = []
        self.env: dict[str, str] = dict(PASSWORD_ENV)
        self.audits = 0
        self.metrics = True

    def server(self, index: int, window: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": f"s{index:04d}",
            "api_url": self.sim.url + api_path(index),
            "credentials": "main",
            "windows": [window],
            **extra,
        }

    def write(
        self,
        servers: Sequence[Mapping[str, Any]],
        *,
        credentials: Mapping[str, Mapping[str, Any]] | None = None,
        daemon: Mapping[str, Any] | None = None,
        client: Mapping[str, Any] | None = None,
        backoff: Mapping[str, Any] | None = None,
        path: Path | None = None,
    ) -> Path:
        """The config, metrics on a port each daemon picks (its `daemon.started` says)."""
        self.metrics = (daemon or {}).get("metrics_listen", "on") != ""
        return write_daemon_config(
            path or self.config_path,
            servers=list(servers),
            credentials=credentials or MAIN,
            daemon={
                "state_path": str(self.state_path),
                "metrics_listen": "127.0.0.1:0",
                **(daemon or {}),
            },
            client={"timeout": "3s", **(client or {})},
            backoff=backoff,
        )

    def start(
        self, config: Path | None = None, env: Mapping[str, str] | None = None
    ) -> DaemonProcess:
        return self.adopt(
            DaemonProcess(config or self.config_path, env={**self.env, **(env or {})})
        )

    def adopt(self, daemon: DaemonProcess) -> DaemonProcess:
        """Start a daemon made elsewhere (another user, a resource limit) as one of ours."""
        self.daemons.append(daemon)
        return daemon.start()

    def cli(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_refreshd(*args, "-c", config or self.config_path, env=self.env)

    def views(self, config: Path) -> str:
        """What `refreshd status` and `refreshd history` print, human and --json, from one
        real process (one interpreter start instead of four)."""
        done = subprocess.run(
            [sys.executable, "-c", _VIEWS, str(config)],
            capture_output=True,
            text=True,
            env=clean_env(self.env),
            cwd=REPO,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.rstrip().endswith("views: [0, 0, 0, 0]"), done.stdout[-500:]
        return done.stdout + done.stderr

    def audit(self, daemon: DaemonProcess | None = None, *, config: Path | None = None) -> int:
        """Search everything a person or a scraper sees for every form of every password;
        assert none is found and return how many places were searched."""
        places: dict[str, str | bytes] = {}
        if daemon is not None and daemon.alive() and self.metrics:
            status, text = http_get(f"http://127.0.0.1:{daemon.metrics_port()}/metrics")
            if status == 200:
                places["/metrics"] = text
        views = self.views(config or self.config_path)
        places["refreshd status, status --json, history, history --json"] = views
        for each in self.daemons:
            places[f"daemon {each.pid} stdout"] = each.stdout
            places[f"daemon {each.pid} stderr"] = each.stderr
        if self.state_path.parent.is_dir():
            for file in sorted(self.state_path.parent.iterdir()):
                if file.is_file():
                    places[file.name] = file.read_bytes()
        hits = []
        for place, content in places.items():
            for secret in SECRETS:
                for form in secret_forms(secret):
                    needle: str | bytes = form.encode() if isinstance(content, bytes) else form
                    if needle in content:  # type: ignore[operator]
                        hits.append((place, secret[:3] + "..."))
        FIGURES["places searched"] += len(places)
        FIGURES["secrets found"] += len(hits)
        self.audits += 1
        assert hits == [], f"passwords found in: {hits}"
        return len(places)

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.stop(timeout=10)
        FIGURES["daemon processes"] += len(self.daemons)
        for daemon in self.daemons:
            assert_json_lines_only(daemon)


@contextlib.contextmanager
def open_fleet(
    tmp_path: Path, users: Sequence[SimUser] = (), tls: ssl.SSLContext | None = None
) -> Iterator[Fleet]:
    """A fleet whose simulator knows `sim_users()` and `users` (over https:// with `tls`,
    a server context); its daemons are stopped and their output checked on leaving."""
    users = [*sim_users(), *users]
    with running_simulator(users=users, servers=SIM_SERVERS, tls=tls) as sim:
        fleet = Fleet(tmp_path, sim)
        try:
            yield fleet
        finally:
            fleet.close()

"""The running simulator: its life (start/stop), its lock-guarded state, stats, calls, faults."""

# Faults replace or wrap the answer for API paths only (never /_sim/), so a test can
# always reach the admin endpoints to observe and undo them. handler.py serves one
# connection and calls the underscored methods below.

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from refreshd.clock import Clock, system_clock
from refreshd.simulator import faults
from refreshd.simulator.faults import LOGIN_PAGE_PATH, Fault
from refreshd.simulator.handler import Server, Server6
from refreshd.simulator.rules import (
    DEFAULT_SERVERS,
    DEFAULT_USERS,
    Answer,
    Request,
    SimServer,
    SimUser,
    Vicidial,
)

if TYPE_CHECKING:  # pymysql is imported only by a simulator given a database
    from refreshd.simulator.database import SimDatabase

__all__ = ["API_PATH", "LOGIN_PAGE_PATH", "Simulator"]

API_PATH = "/vicidial/non_agent_api.php"
CALLS_KEPT = 10_000


@dataclass
class _Traffic:
    requests: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    errors: int = 0
    tls_refused: int = 0  # connections whose TLS handshake failed: nothing was read


class Simulator:
    """A running fake VICIdial web server; every piece of state sits behind one lock."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Sequence[SimUser] | None = None,
        servers: Sequence[SimServer] | None = None,
        clock: Clock = system_clock,
        check_server_ip: bool = False,
        keepalive_interval: float | None = None,
        database: SimDatabase | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if keepalive_interval is not None and keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive")
        self._vicidial = Vicidial(
            DEFAULT_USERS if users is None else tuple(users),
            DEFAULT_SERVERS if servers is None else tuple(servers),
            check_server_ip=check_server_ip,
        )
        self._requested_host = host
        self._requested_port = port
        self._clock = clock
        self._keepalive_interval = keepalive_interval
        self._database = database  # mirrors servers/system_settings into a real MariaDB
        self._tls = tls  # a server context with its certificate: serve https://

        self._lock = threading.Lock()
        self._traffic = _Traffic()
        self._calls: deque[dict[str, Any]] = deque(maxlen=CALLS_KEPT)
        self._faults: dict[str | None, Fault] = {}
        self._connections: set[socket.socket] = set()

        self._stopping = threading.Event()
        self._httpd: Server | None = None
        self._threads: list[threading.Thread] = []

    # -- life -----------------------------------------------------------------

    def start(self) -> Simulator:
        if self._httpd is not None:
            raise RuntimeError("simulator already started")
        self._mirror()
        if self._stopping.is_set():
            raise RuntimeError("a stopped simulator cannot be restarted; make a new one")
        server_class = Server6 if ":" in self._requested_host else Server
        self._httpd = server_class((self._requested_host, self._requested_port), self, self._tls)
        # A short poll keeps stop() fast; tests start and stop hundreds of these.
        self._spawn("refreshd-simulator", self._httpd.serve_forever, 0.01)
        if self._keepalive_interval is not None:
            self._spawn("refreshd-simulator-keepalive", self._keepalive_loop)
        return self

    def _spawn(self, name: str, target: Callable[..., object], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop serving; requests stuck in a slow fault are cut off, not waited for."""
        self._stopping.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._threads.clear()

    def __enter__(self) -> Simulator:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _keepalive_loop(self) -> None:
        assert self._keepalive_interval is not None
        while not self._stopping.wait(self._keepalive_interval):
            self.keepalive()

    # -- addresses ------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._requested_host

    @property
    def port(self) -> int:
        if self._httpd is None:
            return self._requested_port
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "http" if self._tls is None else "https"
        return f"{scheme}://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PATH

    # -- control and observation ----------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = self._now()
        with self._lock:
            vicidial, tally, traffic = self._vicidial, self._vicidial.tally, self._traffic
            return {
                "requests": dict(traffic.requests),
                "functions": dict(tally.functions),
                "logins": dict(tally.logins),
                "users": {
                    name: {
                        "failed_login_count": vicidial.failed_login_count(name),
                        "locked": vicidial.is_locked(name, now),
                    }
                    for name in vicidial.user_names
                },
                # Every lock-out since the start, lifted or not: "never locked" is [].
                "lockouts": [dataclasses.asdict(lock) for lock in vicidial.lockouts],
                "servers": [
                    {
                        "server_ip": s.server_ip,
                        "active": s.active,
                        "rebuild_conf_files": "Y" if vicidial.flagged(s.server_ip) else "N",
                    }
                    for s in vicidial.servers
                ],
                "refreshes": tally.refreshes,
                "in_flight": traffic.in_flight,
                "peak_in_flight": traffic.peak_in_flight,
                "errors": traffic.errors,
                "tls_refused": traffic.tls_refused,
                "faults": [f.as_dict() for f in self._faults.values()],
            }

    def calls(self) -> list[dict[str, Any]]:
        """The last API calls, oldest first; never the password."""
        with self._lock:
            return list(self._calls)

    def set_fault(
        self,
        mode: str,
        *,
        path: str | None = None,
        count: int | None = None,
        latency: float = 0.0,
        interval: float | None = None,
        delay: float | None = None,
    ) -> None:
        """Make API calls misbehave: on `path` only (else every path), for `count` calls
        (else until cleared). A fault for a path replaces that path's previous one and
        wins over the global one. `interval` (seconds between two writes of a slow mode)
        and `delay` (seconds the PHP's answer is held) change the mode's default."""
        fault = faults.make_fault(
            mode, path=path, count=count, latency=latency, interval=interval, delay=delay
        )
        with self._lock:
            if fault.mode == "none" and fault.latency == 0 and fault.remaining is None:
                self._faults.pop(fault.path, None)
            else:
                self._faults[fault.path] = fault

    def update_user(self, name: str, **changes: Any) -> SimUser:
        """Change a user as VICIdial's admin screens would (grant API access, say);
        the login's failure count stays as it is."""
        with self._lock:
            return self._vicidial.update_user(name, **changes)

    def add_user(self, user: SimUser) -> None:
        with self._lock:
            self._vicidial.add_user(user)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Counters, the call log, login lock state and server flags back to a fresh start
        (faults stay: clear them with clear_faults)."""
        with self._lock:
            in_flight = self._traffic.in_flight
            self._traffic = _Traffic(in_flight=in_flight, peak_in_flight=in_flight)
            self._calls.clear()
            self._vicidial.reset()
            self._mirror()

    def keepalive(self) -> None:
        """What each box's keepalive cron does: clear its own flag, then rebuild (a box
        whose cron is dead keeps its flag)."""
        with self._lock:
            self._vicidial.keepalive()
            self._mirror()

    def set_keepalive(self, server_ip: str, *, alive: bool) -> None:
        """Break or mend one box's keepalive cron."""
        with self._lock:
            self._vicidial.set_keepalive(server_ip, alive=alive)

    # -- request bookkeeping (called by the handler) --------------------------

    def _begin(self, path: str, *, api: bool) -> Fault | None:
        with self._lock:
            t = self._traffic
            t.requests[path] += 1
            t.in_flight += 1
            t.peak_in_flight = max(t.peak_in_flight, t.in_flight)
            if not api:
                return None
            fault = self._faults.get(path) or self._faults.get(None)
            if fault is None:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[fault.path]
            return dataclasses.replace(fault)

    def _end(self) -> None:
        with self._lock:
            self._traffic.in_flight -= 1

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _count_error(self) -> None:
        with self._lock:
            self._traffic.errors += 1

    def _count_tls_refused(self) -> None:
        with self._lock:
            self._traffic.tls_refused += 1

    def _record(self, path: str, fields: Mapping[str, str], kind: str, received: float) -> None:
        """Log a call that never reached the PHP (a fault answered first)."""
        with self._lock:
            self._log_call(path, Request.parse(fields), kind, self._now(), received)

    def _now(self) -> float:
        """The wall clock, in seconds: what the PHP's time() returns."""
        return self._clock.now().timestamp()

    def _php(self, path: str, fields: Mapping[str, str], client_ip: str, received: float) -> Answer:
        """What non_agent_api.php answers to these request fields, with its side effects."""
        req = Request.parse(fields)
        now = self._now()
        with self._lock:
            answer = self._vicidial.answer_request(req, client_ip, now)
            self._log_call(path, req, answer.kind, now, received)
            if answer.kind == "success":
                self._mirror()
            return answer

    def _mirror(self) -> None:
        """The database's rows made equal to the rules' state (called under the lock)."""
        if self._database is not None:
            vicidial = self._vicidial
            self._database.write(
                vicidial.servers, vicidial.flagged_ips(), vicidial.reload_timestamp
            )

    def _log_call(self, path: str, req: Request, kind: str, now: float, received: float) -> None:
        # The password is deliberately absent: this log is served over HTTP.
        # t: when the PHP ran (after any latency fault); received: when the request line
        # arrived, before headers and body were read (what a firing lag is measured to).
        self._calls.append(
            {
                "t": now,
                "received": received,
                "path": path,
                "function": req.function,
                "user": req.user,
                "stage": req.stage,
                "server_ip": req.server_ip,
                "answer_kind": kind,
            }
        )

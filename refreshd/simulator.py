"""The VICIdial API simulator: a loopback non_agent_api.php with users, lock-out and faults."""

# How it answers, in the order VICIdial's PHP checks (non_agent_api.php and
# user_authorization() in functions.php):
#
#   function=version                  -> VERSION line, no login
#   function coffee/brew_coffee/...   -> HTTP 418, no login
#   login (user, pass, level > 6, active, lock-out) -> Login incorrect / Too many login attempts
#   the user's IP list                -> IP Address is not allowed
#   function=server_refresh:
#     source shorter than 2           -> Invalid Source (two lines)
#     function not allowed            -> auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION
#     level > 7, API and AST access   -> USER DOES NOT HAVE PERMISSION TO REFRESH SERVERS
#     stage without REFRESH           -> YOU MUST USE ALL REQUIRED FIELDS (the probe)
#     server_ip unknown (tutorial mode only) -> SERVER IP NOT FOUND
#     else flag every active server   -> SUCCESS ... |<flags changed>
#   any other function                -> NO FUNCTION SPECIFIED
#
# Faults replace or wrap that answer for API paths only (never /_sim/), so a
# test can always reach the admin endpoints to observe and undo them.

from __future__ import annotations

import contextlib
import dataclasses
import gc
import ipaddress
import json
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import tomllib
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, cast
from urllib.parse import parse_qsl, urlsplit

from refreshd.config import is_loopback_host

__all__ = [
    "API_PATH",
    "FAULT_MODES",
    "SimServer",
    "SimUser",
    "Simulator",
    "load_simulator_config",
    "serve",
]

API_PATH = "/vicidial/non_agent_api.php"
API_SUFFIX = "non_agent_api.php"
LOGIN_PAGE_PATH = "/login.php"

# user_authorization(): 10 failures lock the login while its last stamp is under 900 s old.
LOCK_TRIGGER_ATTEMPTS = 10
LOCK_SECONDS = 900.0

VERSION = "2.14-917a"
BUILD = "240101-1200"

CALLS_KEPT = 10_000
MAX_REQUEST_BODY = 1_000_000

# The PHP answers 418 to exactly these names, before any login.
_COFFEE_FUNCTIONS = frozenset({"coffee", "start_coffee", "make_coffee", "brew_coffee"})

FAULT_MODES = (
    "none",
    "latency",
    "http500",
    "http502",
    "http503",
    "http429",
    "html",
    "php_warning",
    "empty",
    "reset",
    "timeout",
    "trickle",
    "redirect_login",
    "big",
)
# Modes in which the PHP still runs (side effects happen); the others answer
# before reaching it, so no login is counted and no flag changes.
_EXECUTING_MODES = frozenset({"none", "latency", "php_warning", "trickle"})

TIMEOUT_FAULT_SECONDS = 30.0
TRICKLE_SECONDS_PER_BYTE = 0.5
BIG_BODY_BYTES = 10 * 1024 * 1024

_NOT_USER_CHARS = re.compile(r"[^-_0-9A-Za-z]")
_NOT_SOURCE_CHARS = re.compile(r"[^0-9A-Za-z]")
_NOT_SERVER_IP_CHARS = re.compile(r"[^-.:0-9A-Za-z]")


@dataclass(frozen=True)
class SimUser:
    """One row of `vicidial_users`, reduced to what the API checks."""

    user: str
    password: str
    user_level: int = 9
    active: bool = True
    api_access: bool = True  # vdc_agent_api_access
    ast_admin_access: bool = True
    api_functions: tuple[str, ...] = ("ALL_FUNCTIONS",)
    allowed_ips: tuple[str, ...] = ()  # empty = any; else the caller's IP must be listed


@dataclass(frozen=True)
class SimServer:
    """One row of `servers`."""

    server_ip: str
    active: bool = True


DEFAULT_USERS = (SimUser("admin", "admin1234"),)
DEFAULT_SERVERS = (SimServer("10.0.0.11"), SimServer("10.0.0.12"))


@dataclass
class _LoginState:
    failed_login_count: int = 0
    # VICIdial's default last_login_date is 2001-01-01: "long ago", never locking.
    last_login: float = 0.0


@dataclass
class _Fault:
    mode: str
    path: str | None
    remaining: int | None
    latency: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "path": self.path,
            "remaining": self.remaining,
            "latency": self.latency,
        }


class _Answer(NamedTuple):
    status: int
    body: str
    kind: str


@dataclass
class _Counters:
    requests: Counter[str] = field(default_factory=Counter)
    functions: Counter[str] = field(default_factory=Counter)
    logins: Counter[str] = field(
        default_factory=lambda: Counter({"ok": 0, "failed": 0, "locked": 0, "ipblock": 0})
    )
    refreshes: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    errors: int = 0


class Simulator:
    """A running fake VICIdial web server; every piece of state sits behind one lock."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Sequence[SimUser] | None = None,
        servers: Sequence[SimServer] | None = None,
        clock: Callable[[], float] = time.time,
        check_server_ip: bool = False,
        keepalive_interval: float | None = None,
    ) -> None:
        users = DEFAULT_USERS if users is None else tuple(users)
        servers = DEFAULT_SERVERS if servers is None else tuple(servers)
        names = [u.user for u in users]
        if len(set(names)) != len(names):
            raise ValueError("simulator users must have distinct names")
        if keepalive_interval is not None and keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive")
        self._requested_host = host
        self._requested_port = port
        self._clock = clock
        self._check_server_ip = check_server_ip
        self._keepalive_interval = keepalive_interval
        self._users = {u.user: u for u in users}
        self._servers = tuple(servers)

        self._lock = threading.Lock()
        self._logins = {u.user: _LoginState() for u in users}
        self._flags = {s.server_ip: False for s in servers}
        self._counters = _Counters()
        self._calls: deque[dict[str, Any]] = deque(maxlen=CALLS_KEPT)
        self._faults: dict[str | None, _Fault] = {}
        self._connections: set[socket.socket] = set()

        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._threads: list[threading.Thread] = []

    # -- life -----------------------------------------------------------------

    def start(self) -> Simulator:
        if self._httpd is not None:
            raise RuntimeError("simulator already started")
        if self._stopping.is_set():
            raise RuntimeError("a stopped simulator cannot be restarted; make a new one")
        server_class = _Server6 if ":" in self._requested_host else _Server
        self._httpd = server_class((self._requested_host, self._requested_port), self)
        serving = threading.Thread(
            target=self._httpd.serve_forever,
            # A short poll keeps stop() fast; tests start and stop hundreds of these.
            kwargs={"poll_interval": 0.01},
            name="refreshd-simulator",
            daemon=True,
        )
        serving.start()
        self._threads.append(serving)
        if self._keepalive_interval is not None:
            beating = threading.Thread(
                target=self._keepalive_loop,
                args=(self._keepalive_interval,),
                name="refreshd-simulator-keepalive",
                daemon=True,
            )
            beating.start()
            self._threads.append(beating)
        return self

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

    def _keepalive_loop(self, interval: float) -> None:
        while not self._stopping.wait(interval):
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
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PATH

    # -- control and observation ----------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            c = self._counters
            return {
                "requests": dict(c.requests),
                "functions": dict(c.functions),
                "logins": dict(c.logins),
                "users": {
                    name: {
                        "failed_login_count": state.failed_login_count,
                        "locked": self._is_locked(state, now),
                    }
                    for name, state in self._logins.items()
                },
                "servers": [
                    {
                        "server_ip": s.server_ip,
                        "active": s.active,
                        "rebuild_conf_files": "Y" if self._flags[s.server_ip] else "N",
                    }
                    for s in self._servers
                ],
                "refreshes": c.refreshes,
                "in_flight": c.in_flight,
                "peak_in_flight": c.peak_in_flight,
                "errors": c.errors,
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
    ) -> None:
        """Make API calls misbehave: on `path` only (else every path), for `count` calls
        (else until cleared). A fault for a path replaces that path's previous one and
        wins over the global one."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(FAULT_MODES)}")
        # Values may come straight from JSON (POST /_sim/faults): check their types too.
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
            raise ValueError("fault count must be a positive integer or null")
        if count is not None and count < 1:
            raise ValueError("fault count must be a positive integer or null")
        if not isinstance(latency, int | float) or isinstance(latency, bool) or latency < 0:
            raise ValueError("fault latency must be zero or more seconds")
        if path is not None and not isinstance(path, str):
            raise ValueError("fault path must be a string or null")
        if path is not None and not path.startswith("/"):
            path = "/" + path
        with self._lock:
            if mode == "none" and latency == 0 and count is None:
                self._faults.pop(path, None)
            else:
                self._faults[path] = _Fault(mode, path, count, float(latency))

    def update_user(self, name: str, **changes: Any) -> SimUser:
        """Change a user as VICIdial's admin screens would (grant API access, say);
        the login's failure count stays as it is."""
        with self._lock:
            user = dataclasses.replace(self._users[name], **changes)
            self._users[name] = user
            return user

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Counters, the call log, login lock state and server flags back to a fresh start
        (faults stay: clear them with clear_faults)."""
        with self._lock:
            in_flight = self._counters.in_flight
            self._counters = _Counters(in_flight=in_flight, peak_in_flight=in_flight)
            self._calls.clear()
            for name in self._logins:
                self._logins[name] = _LoginState()
            for ip in self._flags:
                self._flags[ip] = False

    def keepalive(self) -> None:
        """What each server's keepalive cron does: rebuild, then clear its own flag."""
        with self._lock:
            for ip in self._flags:
                self._flags[ip] = False

    # -- request bookkeeping (called by the handler) --------------------------

    def _begin(self, path: str, *, api: bool) -> _Fault | None:
        with self._lock:
            c = self._counters
            c.requests[path] += 1
            c.in_flight += 1
            c.peak_in_flight = max(c.peak_in_flight, c.in_flight)
            if not api:
                return None
            fault = self._faults.get(path) or self._faults.get(None)
            if fault is None:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[fault.path]
            return _Fault(fault.mode, fault.path, fault.remaining, fault.latency)

    def _end(self) -> None:
        with self._lock:
            self._counters.in_flight -= 1

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _count_error(self) -> None:
        with self._lock:
            self._counters.errors += 1

    def _record(self, path: str, fields: Mapping[str, str], kind: str, received: float) -> None:
        """Log a call that never reached the PHP (a fault answered first)."""
        with self._lock:
            self._log_call(path, _Request.parse(fields), kind, self._clock(), received)

    def _log_call(self, path: str, req: _Request, kind: str, now: float, received: float) -> None:
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

    # -- the PHP ---------------------------------------------------------------

    def _php(
        self, path: str, fields: Mapping[str, str], client_ip: str, received: float
    ) -> _Answer:
        """What non_agent_api.php answers to these request fields, with its side effects."""
        req = _Request.parse(fields)
        now = self._clock()
        with self._lock:
            self._counters.functions[req.function or "(missing)"] += 1
            answer = self._answer(req, client_ip, now)
            self._log_call(path, req, answer.kind, now, received)
            return answer

    def _answer(self, req: _Request, client_ip: str, now: float) -> _Answer:
        if req.function == "version":
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
            return _ok(
                f"VERSION: {VERSION}|BUILD: {BUILD}|DATE: {stamp}|EPOCH: {int(now)}"
                "|DST: 0|TZ: 0|TZNOW: 0|",
                "version",
            )
        if req.function in _COFFEE_FUNCTIONS:
            # No newline and no Content-type line: the PHP echoes just this.
            return _Answer(418, f"Coffee: {req.function}|Error 418 I'm a teapot", "teapot")

        login = self._login(req, client_ip, now)
        if login is not None:
            return login
        user = self._users[req.user]

        if req.function != "server_refresh":
            return _ok("ERROR: NO FUNCTION SPECIFIED", "no_function")
        # server_refresh checks source, allowed function, permission, then stage, the
        # order of the PHP's other functions that check a source (agent_ingroup_info).
        # The probe (no stage) therefore proves all of the others without a change.
        if len(req.source) < 2:
            return _ok(
                f"ERROR: Invalid Source - {req.source}\nERROR: Invalid Source: |{req.source}|",
                "invalid_source",
            )
        if "ALL_FUNCTIONS" not in user.api_functions and req.function not in user.api_functions:
            return _ok(
                "ERROR: auth USER DOES NOT HAVE PERMISSION TO USE THIS FUNCTION: "
                f"|{req.user}|{req.function}|",
                "function_not_allowed",
            )
        if user.user_level < 8 or not user.api_access or not user.ast_admin_access:
            return _ok(
                "ERROR: server_refresh USER DOES NOT HAVE PERMISSION TO REFRESH SERVERS: "
                f"|{req.user}|0",
                "no_refresh_permission",
            )
        if "REFRESH" not in req.stage:
            return _ok(
                f"ERROR: server_refresh YOU MUST USE ALL REQUIRED FIELDS: |{req.user}|{req.stage}|",
                "missing_fields",
            )
        if self._check_server_ip and req.server_ip and req.server_ip not in self._flags:
            return _ok("ERROR: SERVER IP NOT FOUND", "server_ip_not_found")

        # MySQL's affected rows: only rows whose flag really changed count.
        changed = 0
        for server in self._servers:
            if server.active and not self._flags[server.server_ip]:
                self._flags[server.server_ip] = True
                changed += 1
        self._counters.refreshes += 1
        return _ok(
            f"SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - {req.user}|{changed}",
            "success",
        )

    def _login(self, req: _Request, client_ip: str, now: float) -> _Answer | None:
        """user_authorization(): None when the login is good, else the answer to send."""
        logins = self._counters.logins
        user = self._users.get(req.user)
        state = self._logins.get(req.user)
        lock_over = now - LOCK_SECONDS
        if (
            user is not None
            and state is not None
            and req.password == user.password
            and user.user_level > 6
            and user.active
            and (state.failed_login_count < LOCK_TRIGGER_ATTEMPTS or state.last_login < lock_over)
        ):
            if user.allowed_ips and not _ip_listed(client_ip, user.allowed_ips):
                # Refused before the success stamp: the failure count is left as it was.
                logins["ipblock"] += 1
                return _ok(
                    f"ERROR: Your IP Address is not allowed: {client_ip}: ||IPBLOCK|", "ipblock"
                )
            state.failed_login_count = 0
            state.last_login = now
            logins["ok"] += 1
            return None

        if state is not None:
            if state.failed_login_count < LOCK_TRIGGER_ATTEMPTS:
                # The PHP increments without stamping: the 15 minutes run from the
                # last success (or the last restart of the count), not the last failure.
                state.failed_login_count += 1
            elif state.last_login < lock_over:
                state.failed_login_count = 1
                state.last_login = now
            else:
                # A locked attempt changes nothing, so the lock lifts on time.
                logins["locked"] += 1
                return _ok(
                    f"ERROR: Too many login attempts, try again in 15 minutes: |{req.user}|LOCK|",
                    "locked",
                )
        logins["failed"] += 1
        return _ok(
            f"ERROR: Login incorrect, please try again: |{req.user}|{req.password}|BAD|",
            "login_incorrect",
        )

    @staticmethod
    def _is_locked(state: _LoginState, now: float) -> bool:
        return (
            state.failed_login_count >= LOCK_TRIGGER_ATTEMPTS
            and state.last_login >= now - LOCK_SECONDS
        )


def _ok(line: str, kind: str) -> _Answer:
    return _Answer(200, line + "\n", kind)


def _ip_listed(ip: str, allowed: Sequence[str]) -> bool:
    # VICIdial IP lists hold addresses or class-C wildcards such as 10.1.2.x.
    class_c = ip.rsplit(".", 1)[0] + ".x" if "." in ip else ip
    return ip in allowed or class_c in allowed


@dataclass(frozen=True)
class _Request:
    function: str
    user: str
    password: str
    source: str
    stage: str
    server_ip: str

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> _Request:
        """The PHP's input filters, applied before anything looks at a value."""
        return cls(
            function=_NOT_USER_CHARS.sub("", fields.get("function", "")),
            user=_NOT_USER_CHARS.sub("", fields.get("user", "")),
            password=_NOT_USER_CHARS.sub("", fields.get("pass", "")),
            source=_NOT_SOURCE_CHARS.sub("", fields.get("source", "")),
            stage=_NOT_USER_CHARS.sub("", fields.get("stage", "")),
            server_ip=_NOT_SERVER_IP_CHARS.sub("", fields.get("server_ip", "")),
        )


# -- HTTP ----------------------------------------------------------------------------

_HTML = "text/html; charset=UTF-8"
_JSON = "application/json"

_PHP_WARNING = (
    "<br />\n<b>Warning</b>:  mysqli_fetch_row() expects parameter 1 to be mysqli_result, "
    "bool given in <b>/srv/www/htdocs/vicidial/non_agent_api.php</b> on line <b>1290</b>"
    "<br />\n<br />\n<b>Notice</b>:  Undefined offset: 0 in "
    "<b>/srv/www/htdocs/vicidial/non_agent_api.php</b> on line <b>1291</b><br />\n"
)
_HTML_ERROR_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Database Error</title></head>\n"
    "<body><h1>Service temporarily unavailable</h1>\n"
    "<p>MySQL connection failed: Too many connections</p></body></html>\n"
)
_LOGIN_FORM = (
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>\n"
    '<form method="post" action="/login.php">\n'
    '<label>Username <input name="username"></label>\n'
    '<label>Password <input type="password" name="password"></label>\n'
    '<button type="submit">Sign in</button>\n</form></body></html>\n'
)
_STATUS_FAULTS = {"http500": 500, "http502": 502, "http503": 503, "http429": 429}

_big_body_cache: list[bytes] = []


def _big_body() -> bytes:
    if not _big_body_cache:
        line = b"<!-- padding padding padding padding padding padding padding padding -->\n"
        body = b"<html><body>\n" + line * (BIG_BODY_BYTES // len(line) + 1)
        _big_body_cache.append(body[:BIG_BODY_BYTES])
    return _big_body_cache[0]


def _error_page(status: int) -> str:
    phrase = HTTPStatus(status).phrase
    return (
        '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n'
        f"<html><head>\n<title>{status} {phrase}</title>\n</head><body>\n"
        f"<h1>{phrase}</h1>\n</body></html>\n"
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would ask DNS for getfqdn(host): slow, and never needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Quiet by default: a client hanging up mid-answer is normal here.
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            # A bug in the simulator itself: count it and show the traceback.
            self.sim._count_error()
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one thread serves a client's whole session
    server_version = "Apache"
    sys_version = ""
    # Headers and body go out in one write, and small answers must not wait for an ACK.
    disable_nagle_algorithm = True
    _received = 0.0  # the clock when the current request line arrived

    @property
    def sim(self) -> Simulator:
        return cast(_Server, self.server).sim

    def setup(self) -> None:
        super().setup()
        self.sim._track(self.connection, add=True)

    def finish(self) -> None:
        self.sim._track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: benchmarks send thousands of requests a second."""

    def parse_request(self) -> bool:
        # Called as soon as the request line has been read: the call has arrived.
        self._received = self.sim._clock()
        return super().parse_request()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    # -- dispatch ---------------------------------------------------------------

    def _handle(self) -> None:
        split = urlsplit(self.path)
        path = split.path or "/"
        body = self._read_body()
        if body is None:
            return
        if path.startswith("/_sim/"):
            self._admin(path, body)
            return
        is_api = path.endswith(API_SUFFIX)
        fault = self.sim._begin(path, api=is_api)
        try:
            if is_api:
                self._api(path, self._fields(split.query, body), fault)
            elif path == LOGIN_PAGE_PATH:
                self._send(200, _LOGIN_FORM.encode())
            else:
                self._send(404, _error_page(404).encode())
        finally:
            self.sim._end()

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._send(411, _error_page(411).encode())
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST_BODY:
            self.close_connection = True
            self._send(413, _error_page(413).encode())
            return None
        return self.rfile.read(length) if length else b""

    def _fields(self, query: str, body: bytes) -> dict[str, str]:
        # PHP: each variable from $_GET if present there, else from $_POST.
        fields: dict[str, str] = {}
        ctype = self.headers.get("Content-Type", "application/x-www-form-urlencoded")
        if body and ctype.startswith("application/x-www-form-urlencoded"):
            fields.update(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        fields.update(parse_qsl(query, keep_blank_values=True))
        return fields

    # -- the API, with faults -----------------------------------------------------

    def _api(self, path: str, fields: dict[str, str], fault: _Fault | None) -> None:
        mode = fault.mode if fault is not None else "none"
        if fault is not None and fault.latency > 0 and self.sim._stopping.wait(fault.latency):
            self._abort()
            return
        if mode not in _EXECUTING_MODES:
            self.sim._record(path, fields, f"fault_{mode}", self._received)
            self._fault_answer(mode)
            return
        answer = self.sim._php(path, fields, self.client_address[0], self._received)
        body = answer.body.encode("utf-8")
        if mode == "php_warning":
            body = _PHP_WARNING.encode() + body
        if mode == "trickle":
            self._trickle(answer.status, body)
        else:
            self._send(answer.status, body)

    def _fault_answer(self, mode: str) -> None:
        if mode in _STATUS_FAULTS:
            status = _STATUS_FAULTS[mode]
            extra = [("Retry-After", "1")] if status == 429 else []
            self._send(status, _error_page(status).encode(), extra=extra)
        elif mode == "html":
            self._send(200, _HTML_ERROR_PAGE.encode())
        elif mode == "empty":
            self._send(200, b"")
        elif mode == "redirect_login":
            self._send(302, _error_page(302).encode(), extra=[("Location", LOGIN_PAGE_PATH)])
        elif mode == "big":
            self._send(200, _big_body())
        elif mode == "reset":
            # Half a status block, then RST instead of FIN: the client sees a reset.
            with contextlib.suppress(OSError):
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/")
            self._abort()
        elif mode == "timeout":
            self.sim._stopping.wait(TIMEOUT_FAULT_SECONDS)
            self._abort()
        else:  # pragma: no cover - FAULT_MODES and this dispatch are kept in step
            raise AssertionError(mode)

    def _trickle(self, status: int, body: bytes) -> None:
        self.wfile.write(self._head(status, len(body), _HTML, []))
        for i in range(len(body)):
            self.wfile.write(body[i : i + 1])
            if self.sim._stopping.wait(TRICKLE_SECONDS_PER_BYTE):
                self._abort()
                return

    def _abort(self) -> None:
        """Close with SO_LINGER 0, so the peer gets a TCP reset."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    # -- admin ----------------------------------------------------------------------

    def _admin(self, path: str, body: bytes) -> None:
        sim, method = self.sim, self.command
        route = (method, path.rstrip("/"))
        if route == ("GET", "/_sim/stats"):
            self._json(200, sim.stats())
        elif route == ("GET", "/_sim/calls"):
            self._json(200, sim.calls())
        elif route == ("GET", "/_sim/faults"):
            self._json(200, sim.stats()["faults"])
        elif route == ("POST", "/_sim/faults"):
            try:
                spec = json.loads(body or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("the body must be a JSON object")
                unknown = set(spec) - {"mode", "path", "count", "latency"}
                if unknown:
                    raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
                sim.set_fault(
                    str(spec.get("mode", "none")),
                    path=spec.get("path"),
                    count=spec.get("count"),
                    latency=spec.get("latency", 0.0),
                )
            except (ValueError, TypeError) as exc:
                self._json(400, {"error": str(exc)})
                return
            self._json(200, sim.stats()["faults"])
        elif route == ("DELETE", "/_sim/faults"):
            sim.clear_faults()
            self._json(200, [])
        elif route == ("POST", "/_sim/reset"):
            sim.reset()
            self._json(200, {"reset": True})
        elif route == ("POST", "/_sim/keepalive"):
            sim.keepalive()
            self._json(200, {"keepalive": True})
        else:
            self._json(404, {"error": f"no admin endpoint {method} {path}"})

    # -- writing ------------------------------------------------------------------

    def _json(self, status: int, document: Any) -> None:
        self._send(status, json.dumps(document).encode(), ctype=_JSON)

    def _head(self, status: int, length: int, ctype: str, extra: list[tuple[str, str]]) -> bytes:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Date: {self.date_time_string()}",
            "Server: Apache",
            f"Content-Type: {ctype}",
            f"Content-Length: {length}",
        ]
        lines.extend(f"{k}: {v}" for k, v in extra)
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        ctype: str = _HTML,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        head = self._head(status, len(body), ctype, extra or [])
        if len(body) <= 65536:
            self.wfile.write(head + body)
        else:
            self.wfile.write(head)
            view = memoryview(body)
            for start in range(0, len(body), 262144):
                self.wfile.write(view[start : start + 262144])


# -- config file ----------------------------------------------------------------------

_USER_KEYS: dict[str, type] = {
    "user": str,
    "password": str,
    "user_level": int,
    "active": bool,
    "api_access": bool,
    "ast_admin_access": bool,
    "api_functions": list,
    "allowed_ips": list,
}
_SERVER_KEYS: dict[str, type] = {"server_ip": str, "active": bool}


def load_simulator_config(path: Path) -> tuple[list[SimUser], list[SimServer]]:
    """Users and servers from a TOML file of [[users]] and [[servers]] tables.

    A file without [[users]] (or [[servers]]) gets the defaults: one admin user
    "admin"/"admin1234" (servers 10.0.0.11 and 10.0.0.12)."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the simulator config: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc

    unknown = set(data) - {"users", "servers"}
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            "expected only [[users]] and [[servers]] tables"
        )
    users = [
        _user_from(row, f"{path}: users[{i}]") for i, row in enumerate(_tables(data, "users", path))
    ]
    servers = [
        _server_from(row, f"{path}: servers[{i}]")
        for i, row in enumerate(_tables(data, "servers", path))
    ]
    if "users" not in data:
        users = list(DEFAULT_USERS)
    if "servers" not in data:
        servers = list(DEFAULT_SERVERS)
    _no_duplicates([u.user for u in users], f"{path}: users", "user")
    _no_duplicates([s.server_ip for s in servers], f"{path}: servers", "server_ip")
    return users, servers


def _tables(data: Mapping[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    rows = data.get(key, [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: {key} must be an array of tables, written [[{key}]]")
    return rows


def _checked(row: Mapping[str, Any], keys: Mapping[str, type], where: str) -> None:
    unknown = set(row) - set(keys)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known keys: {', '.join(keys)}"
        )
    for key, value in row.items():
        expected = keys[key]
        # TOML true is a Python bool, which is also an int: keep them apart.
        if isinstance(value, bool) and expected is not bool:
            raise ValueError(f"{where}.{key}: expected {expected.__name__}, got a boolean")
        if not isinstance(value, expected):
            raise ValueError(
                f"{where}.{key}: expected {expected.__name__}, got {type(value).__name__}"
            )


def _strings(row: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = row.get(key, [])
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}.{key}: expected a list of strings")
    return tuple(values)


def _user_from(row: Mapping[str, Any], where: str) -> SimUser:
    _checked(row, _USER_KEYS, where)
    for key in ("user", "password"):
        if key not in row:
            raise ValueError(f"{where}: missing required key {key!r}")
        value = row[key]
        if not value or _NOT_USER_CHARS.search(value):
            # VICIdial strips other characters before comparing, so such a login never works.
            raise ValueError(
                f"{where}.{key}: {'empty' if not value else 'has characters VICIdial strips'}; "
                "use only letters, digits, '-' and '_'"
            )
    level = row.get("user_level", 9)
    if not 1 <= level <= 9:
        raise ValueError(f"{where}.user_level: {level} is outside VICIdial's 1 to 9")
    functions = _strings(row, "api_functions", where) if "api_functions" in row else None
    ips = _strings(row, "allowed_ips", where)
    for ip in ips:
        if not re.fullmatch(r"[0-9A-Fa-f.:x]+", ip):
            raise ValueError(f"{where}.allowed_ips: {ip!r} is not an IP address or a.b.c.x")
    return SimUser(
        user=row["user"],
        password=row["password"],
        user_level=level,
        active=row.get("active", True),
        api_access=row.get("api_access", True),
        ast_admin_access=row.get("ast_admin_access", True),
        api_functions=functions if functions is not None else ("ALL_FUNCTIONS",),
        allowed_ips=ips,
    )


def _server_from(row: Mapping[str, Any], where: str) -> SimServer:
    _checked(row, _SERVER_KEYS, where)
    if "server_ip" not in row:
        raise ValueError(f"{where}: missing required key 'server_ip'")
    try:
        ipaddress.ip_address(row["server_ip"])
    except ValueError:
        raise ValueError(f"{where}.server_ip: {row['server_ip']!r} is not an IP address") from None
    return SimServer(server_ip=row["server_ip"], active=row.get("active", True))


def _no_duplicates(names: list[str], where: str, key: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}: {key} {name!r} appears twice")
        seen.add(name)


# -- the `refreshd simulator` command --------------------------------------------------


def serve(
    listen: str,
    config: Path | None,
    *,
    stop: threading.Event | None = None,
    allow_remote: bool = False,
) -> int:
    """Run a simulator until Ctrl-C, SIGTERM or `stop`; 0 after a clean stop,
    2 for a bad --listen, 78 for a bad config, 1 when the address cannot be bound."""
    try:
        host, port = _parse_listen(listen)
    except ValueError as exc:
        print(f"refreshd simulator: --listen {listen!r}: {exc}", file=sys.stderr)
        return 2
    if not allow_remote and not is_loopback_host(host):
        print(
            f"refreshd simulator: refusing to listen on {host!r}: the simulator accepts any "
            "password-shaped request and serves its call log, so it listens on loopback "
            "only (127.0.0.1, ::1 or localhost)",
            file=sys.stderr,
        )
        return 2
    users: list[SimUser] | None = None
    servers: list[SimServer] | None = None
    if config is not None:
        try:
            users, servers = load_simulator_config(config)
        except ValueError as exc:
            print(f"refreshd simulator: {exc}", file=sys.stderr)
            return 78
    sim = Simulator(host=host, port=port, users=users, servers=servers)
    try:
        sim.start()
    except OSError as exc:
        print(f"refreshd simulator: cannot listen on {listen}: {exc.strerror}", file=sys.stderr)
        return 1

    stopped = stop if stop is not None else threading.Event()
    previous: Any = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:

        def on_term(signum: int, frame: FrameType | None) -> None:
            stopped.set()

        previous = signal.signal(signal.SIGTERM, on_term)
        # As the daemon does: a full garbage collection of the start-up objects would
        # hold every request for ~20 ms, and the benchmarks time calls by this clock.
        gc.freeze()
    try:
        event = {"event": "simulator.started", "url": sim.url, "api_url": sim.api_url}
        print(json.dumps(event), flush=True)
        while not stopped.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)

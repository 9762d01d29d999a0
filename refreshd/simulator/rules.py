"""VICIdial's rules, pure: users, servers, the lock-out, and the answer to each request."""

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
# Nothing here reads a clock, opens a socket or starts a thread: time comes in as
# `now`, seconds since the epoch. The HTTP simulator serves these answers, and tests
# use the same `Vicidial` in-process as the oracle of what VICIdial would do.

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_SERVERS",
    "DEFAULT_USERS",
    "LOCK_SECONDS",
    "LOCK_TRIGGER_ATTEMPTS",
    "Answer",
    "Lockout",
    "Request",
    "SimServer",
    "SimUser",
    "Tally",
    "Vicidial",
]

# user_authorization(): 10 failures lock the login while its last stamp is under 900 s old.
LOCK_TRIGGER_ATTEMPTS = 10
LOCK_SECONDS = 900.0

VERSION = "2.14-917a"
BUILD = "240101-1200"

# The PHP answers 418 to exactly these names, before any login.
_COFFEE_FUNCTIONS = frozenset({"coffee", "start_coffee", "make_coffee", "brew_coffee"})

USER_CHARS = re.compile(r"[^-_0-9A-Za-z]")  # what VICIdial strips from user and pass
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
    """One row of `servers`, and whether its box's keepalive cron runs."""

    server_ip: str
    active: bool = True
    server_id: str = ""  # empty: derived from the address, as an installer would name it
    active_asterisk_server: bool = True
    generate_vicidial_conf: bool = True
    keepalive_alive: bool = True  # False: the box's cron is broken; its flag stays 'Y'

    @property
    def id(self) -> str:
        return self.server_id or "srv" + self.server_ip.rsplit(".", 1)[-1]

    @property
    def rebuilds(self) -> bool:
        """ADMIN_keepalive_ALL.pl acts on its row only when both columns are 'Y'."""
        return self.active_asterisk_server and self.generate_vicidial_conf


DEFAULT_USERS = (SimUser("admin", "admin1234"),)
DEFAULT_SERVERS = (SimServer("10.0.0.11"), SimServer("10.0.0.12"))


@dataclass(frozen=True)
class Request:
    """A request's fields after the PHP's input filters, which run before anything
    looks at a value."""

    function: str
    user: str
    password: str
    source: str
    stage: str
    server_ip: str

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> Request:
        return cls(
            function=USER_CHARS.sub("", fields.get("function", "")),
            user=USER_CHARS.sub("", fields.get("user", "")),
            password=USER_CHARS.sub("", fields.get("pass", "")),
            source=_NOT_SOURCE_CHARS.sub("", fields.get("source", "")),
            stage=USER_CHARS.sub("", fields.get("stage", "")),
            server_ip=_NOT_SERVER_IP_CHARS.sub("", fields.get("server_ip", "")),
        )


@dataclass(frozen=True)
class Answer:
    """What non_agent_api.php sends back: HTTP status, body, and a word for the call log."""

    status: int
    body: str
    kind: str


@dataclass(frozen=True)
class Lockout:
    """A login locked at `at` by its tenth recent failure; every login is refused until
    `until`, the right password included."""

    user: str
    at: float
    until: float


@dataclass
class _LoginState:
    failed_login_count: int = 0
    # VICIdial's default last_login_date is 2001-01-01: "long ago", never locking.
    last_login: float = 0.0


@dataclass
class Tally:
    """What the PHP has done since the start (or the last reset)."""

    functions: Counter[str] = field(default_factory=Counter)
    logins: Counter[str] = field(
        default_factory=lambda: Counter({"ok": 0, "failed": 0, "locked": 0, "ipblock": 0})
    )
    refreshes: int = 0


class Vicidial:
    """One VICIdial cluster's database as the API sees it; not thread-safe (the HTTP
    simulator calls it under its lock)."""

    def __init__(
        self,
        users: Sequence[SimUser] = DEFAULT_USERS,
        servers: Sequence[SimServer] = DEFAULT_SERVERS,
        *,
        check_server_ip: bool = False,
    ) -> None:
        names = [u.user for u in users]
        if len(set(names)) != len(names):
            raise ValueError("simulator users must have distinct names")
        self._users = {u.user: u for u in users}
        self.servers = tuple(servers)
        self._check_server_ip = check_server_ip
        self._logins = {u.user: _LoginState() for u in users}
        self._flags = {s.server_ip: False for s in self.servers}
        self.reload_timestamp: float | None = None  # system_settings.reload_timestamp
        self.tally = Tally()
        self.lockouts: list[Lockout] = []

    # -- observation ---------------------------------------------------------------

    def failed_login_count(self, user: str) -> int:
        state = self._logins.get(user)
        return 0 if state is None else state.failed_login_count

    def is_locked(self, user: str, now: float) -> bool:
        state = self._logins.get(user)
        return state is not None and _locked(state, now)

    def flagged(self, server_ip: str) -> bool:
        """`servers.rebuild_conf_files = 'Y'`: flagged by a refresh, not yet rebuilt."""
        return self._flags[server_ip]

    def flagged_ips(self) -> set[str]:
        return {ip for ip, flagged in self._flags.items() if flagged}

    @property
    def user_names(self) -> list[str]:
        return list(self._logins)

    # -- what an administrator or the keepalive cron does ----------------------------

    def keepalive(self) -> None:
        """What each box's keepalive cron does when it runs: a flagged box that generates
        its configuration clears its own flag, then rebuilds. A box whose cron is dead,
        or that generates nothing, keeps its flag."""
        for server in self.servers:
            if server.keepalive_alive and server.rebuilds:
                self._flags[server.server_ip] = False

    def set_keepalive(self, server_ip: str, *, alive: bool) -> None:
        """Break or mend one box's keepalive cron."""
        self.servers = tuple(
            dataclasses.replace(s, keepalive_alive=alive) if s.server_ip == server_ip else s
            for s in self.servers
        )

    def update_user(self, name: str, **changes: Any) -> SimUser:
        """Change a user as VICIdial's admin screens would (grant API access, say);
        the login's failure count stays as it is."""
        user = dataclasses.replace(self._users[name], **changes)
        self._users[name] = user
        return user

    def add_user(self, user: SimUser) -> None:
        """A new row in vicidial_users, as an administrator adds one."""
        if user.user in self._users:
            raise ValueError(f"simulator user {user.user!r} exists already")
        self._users[user.user] = user
        self._logins[user.user] = _LoginState()

    def reset(self) -> None:
        """Login state, lock-outs, flags and the tally back to a fresh start."""
        self._logins = {name: _LoginState() for name in self._logins}
        self._flags = dict.fromkeys(self._flags, False)
        self.reload_timestamp = None
        self.tally = Tally()
        self.lockouts.clear()

    # -- the PHP ---------------------------------------------------------------------

    def answer(self, fields: Mapping[str, str], client_ip: str, now: float) -> Answer:
        """What non_agent_api.php answers to these request fields at `now`, with its
        side effects on logins, flags and the tally."""
        return self.answer_request(Request.parse(fields), client_ip, now)

    def answer_request(self, req: Request, client_ip: str, now: float) -> Answer:
        self.tally.functions[req.function or "(missing)"] += 1
        if req.function == "version":
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
            return _ok(
                f"VERSION: {VERSION}|BUILD: {BUILD}|DATE: {stamp}|EPOCH: {int(now)}"
                "|DST: 0|TZ: 0|TZNOW: 0|",
                "version",
            )
        if req.function in _COFFEE_FUNCTIONS:
            # No newline and no Content-type line: the PHP echoes just this.
            return Answer(418, f"Coffee: {req.function}|Error 418 I'm a teapot", "teapot")
        refused = self._login(req, client_ip, now)
        if refused is not None:
            return refused
        if req.function != "server_refresh":
            return _ok("ERROR: NO FUNCTION SPECIFIED", "no_function")
        return self._server_refresh(req, self._users[req.user], now)

    def _server_refresh(self, req: Request, user: SimUser, now: float) -> Answer:
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
        for server in self.servers:
            if server.active and not self._flags[server.server_ip]:
                self._flags[server.server_ip] = True
                changed += 1
        self.reload_timestamp = now
        self.tally.refreshes += 1
        return _ok(
            f"SUCCESS: server_refresh SERVER REFRESH HAS BEEN TRIGGERED - {req.user}|{changed}",
            "success",
        )

    def _login(self, req: Request, client_ip: str, now: float) -> Answer | None:
        """user_authorization(): None when the login is good, else the answer to send."""
        logins = self.tally.logins
        user = self._users.get(req.user)
        state = self._logins.get(req.user)
        if (
            user is not None
            and state is not None
            and req.password == user.password
            and user.user_level > 6
            and user.active
            and not _locked(state, now)
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
        if state is not None and _locked(state, now):
            # A locked attempt changes nothing (no count, no stamp), so the lock lifts on time.
            logins["locked"] += 1
            return _ok(
                f"ERROR: Too many login attempts, try again in 15 minutes: |{req.user}|LOCK|",
                "locked",
            )
        if state is not None:
            self._count_failure(req.user, state, now)
        logins["failed"] += 1
        return _ok(
            f"ERROR: Login incorrect, please try again: |{req.user}|{req.password}|BAD|",
            "login_incorrect",
        )

    def _count_failure(self, user: str, state: _LoginState, now: float) -> None:
        if state.failed_login_count < LOCK_TRIGGER_ATTEMPTS:
            # The PHP increments without stamping: the 15 minutes run from the
            # last success (or the last restart of the count), not the last failure.
            state.failed_login_count += 1
            if _locked(state, now):
                self.lockouts.append(Lockout(user, now, state.last_login + LOCK_SECONDS))
        else:
            # Ten failures but an old stamp: the count restarts and the time is stamped.
            state.failed_login_count = 1
            state.last_login = now


def _locked(state: _LoginState, now: float) -> bool:
    # The PHP lets a login in when `last_login_date < now - 900`: at exactly 900 s it is
    # still locked.
    return (
        state.failed_login_count >= LOCK_TRIGGER_ATTEMPTS and state.last_login >= now - LOCK_SECONDS
    )


def _ok(line: str, kind: str) -> Answer:
    return Answer(200, line + "\n", kind)


def _ip_listed(ip: str, allowed: Sequence[str]) -> bool:
    # VICIdial IP lists hold addresses or class-C wildcards such as 10.1.2.x.
    class_c = ip.rsplit(".", 1)[0] + ".x" if "." in ip else ip
    return ip in allowed or class_c in allowed

"""The one-shot commands' work: `refresh` now, and `check --online` probes."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

from refreshd.attempt import Attempt, probe, reach, target_of
from refreshd.client import Client, client_for
from refreshd.clock import Clock
from refreshd.config import Config, ServerConfig
from refreshd.core.ledger import Event, Kind
from refreshd.core.policy import REFUSED_LOGIN
from refreshd.core.vicidial import Outcome
from refreshd.dispatch import Dispatcher, Job
from refreshd.logs import utc_text
from refreshd.oneshot import OneShotClaims
from refreshd.runner import Runner

__all__ = ["ProbeLine", "online_check", "refresh_now"]


def refresh_now(runner: Runner, names: Sequence[str]) -> dict[str, Outcome | None]:
    """Refresh the named servers once, now, outside windows and ignoring suspensions (the
    operator asked). Logins go through the runner's gate like the daemon's: none during a
    credentials wait (the caller may set waits aside for --force), one call at a time
    until a login works (on a shared store, one in the fleet: the login's lease), so a wrong
    password costs one failed login, not one per server. Beside a fleet, a server whose run
    an instance is calling is called once that call has ended (`OneShotClaims.quiet`).
    Returns each server's outcome; None where no call was made."""
    config = runner.config
    client = client_for(config)
    dispatcher = Dispatcher(
        client, max_concurrency=config.daemon.max_concurrency, gate=runner, clock=runner.clock
    )
    results: dict[str, Outcome | None] = {}
    lock = threading.Lock()
    finished = threading.Semaphore(0)

    def job_for(server: ServerConfig) -> Job:
        call = runner.call_for(server)

        def done(attempt: Attempt) -> None:
            runner.settle(call, attempt)
            with lock:
                results[server.name] = attempt.answer.outcome
            finished.release()

        def skipped(reason: str) -> None:
            fields = {"server": server.name, "trigger": "manual", "reason": reason}
            runner.tell([Event(Kind.REFRESH_SKIPPED, fields)])
            with lock:
                results[server.name] = None
            finished.release()

        password = call.login_fingerprint or ""
        job = Job(server.name, call.login, password, target_of(config, server), done, skipped)
        if isinstance(runner.claims, OneShotClaims):  # beside a fleet: after its call, if out
            job.before_send = partial(runner.claims.quiet, server.name)
        return job

    try:
        # In one step: a server whose request another's repeats rides along with it.
        dispatcher.submit_all([job_for(config.server(name)) for name in names])
        for _ in names:
            finished.acquire()
    finally:
        dispatcher.stop(grace=0)
        client.close()
    return results


def _host(url: str) -> str:
    """Where a URL points, short: host, port and any path before VICIdial's own."""
    parts = urlsplit(url)
    return parts.netloc + parts.path.removesuffix("/vicidial/non_agent_api.php")


@dataclass(frozen=True)
class ProbeLine:
    """One line of the `check --online` report."""

    kind: str  # "login", "reach", "database" or "cluster"
    subject: str
    url: str
    ok: bool
    detail: str
    duration_ms: int
    warning: bool = False  # ok, but worth an operator's look (same cluster twice)


def online_check(runner: Runner) -> list[ProbeLine]:
    """One side-effect-free login probe per credentials and VICIdial (api_url), and one
    reachability check per api_url. A probe is a login like any other: it goes through the
    runner's gate (never during a credentials wait, one at a time while unproven) and what
    it learns is journaled (a refused login starts the wait). Never more than one login
    attempt per credentials in a run: each failed one counts toward VICIdial's lock-out.
    Then each [databases.NAME] table is read as the daemon would verify (never written)."""
    config = runner.config
    client = client_for(config)
    try:
        lines = _login_lines(runner, client)
        lines += _reach_lines(config, client)
    finally:
        client.close()
    return lines + _database_lines(config, runner.clock) + _cluster_lines(config, runner.clock)


def _cluster_lines(config: Config, clock: Clock) -> list[ProbeLine]:
    """A warning per group of entries whose databases say they are one cluster."""
    if not any(server.database for server in config.servers):
        return []
    from refreshd.verify.clusters import learn_clusters  # PyMySQL, when used

    started = clock.monotonic()
    groups, _ = learn_clusters(config)  # an unreadable database has its FAIL line above
    ms = round((clock.monotonic() - started) * 1000)
    lines = []
    credentials = config.resolved_credentials()
    for group in groups:
        logins = [credentials[config.server(name).credentials] for name in group.servers]
        detail = (
            f"one VICIdial cluster ({group.why}): each refresh reloads every box of it, so "
            "the daemon sends one call per slot for these entries when they are due together"
        )
        if len({(login.user, login.password) for login in logins}) > 1:
            users = ", ".join(sorted({login.user for login in logins}))
            detail += (
                f"; but they log in with different credentials ({users}), and one login's "
                "answer cannot count for another's lock-out rules: one call per login, so "
                "give them the same [credentials] table"
            )
        subject = "cluster " + ", ".join(group.servers)
        lines.append(ProbeLine("cluster", subject, "", True, detail, ms, warning=True))
    return lines


def _database_lines(config: Config, clock: Clock) -> list[ProbeLine]:
    """Each database read once, as the verifier reads it: the telephony servers it would
    wait for; a wrong password or a missing GRANT is a FAIL naming what to do."""
    from refreshd.verify import ClusterDatabase, DatabaseProblem  # PyMySQL, when used

    lines: list[ProbeLine] = []
    for name, table in config.databases.items():
        url = table.parsed
        subject = f"database {name} @ {url.host}:{url.port}/{url.database}"
        database = ClusterDatabase(url, table.secret)
        started = clock.monotonic()
        try:
            reading = database.read()
        except DatabaseProblem as problem:
            ok, detail = False, str(problem)
        else:
            ids = ", ".join(box.server_id for box in reading.boxes)
            ok = bool(reading.boxes)
            detail = (
                f"{len(reading.boxes)} telephony server(s) to verify ({ids}), "
                f"{len(reading.flagged)} still flagged for a rebuild"
                if ok
                else "no telephony server to verify: no servers row has "
                "active_asterisk_server = 'Y' and generate_vicidial_conf = 'Y'; is this the "
                "cluster's VICIdial database?"
            )
        finally:
            database.close()
        ms = round((clock.monotonic() - started) * 1000)
        lines.append(ProbeLine("database", subject, str(url), ok, detail, ms))
    return lines


def _login_lines(runner: Runner, client: Client) -> list[ProbeLine]:
    config = runner.config
    lines: list[ProbeLine] = []
    probed: set[tuple[str, str]] = set()
    refused: dict[str, str] = {}  # login -> the URL that refused it
    for server in config.servers:
        key = (server.credentials, server.api_url)
        if key in probed:
            continue
        probed.add(key)
        subject = f"credentials {server.credentials} @ {_host(server.api_url)}"
        call = runner.call_for(server)
        now = runner.clock.now()
        not_tried = None
        if call.login in refused:
            # Another web server of (likely) the same cluster already refused this login;
            # a second try would only be one more failed login toward a lock-out.
            not_tried = f"not tried: the login was refused at {refused[call.login]}"
        elif (until := runner.waiting(call.login, now)) is not None:
            reason = runner.why_waiting(call.login, now)
            when = utc_text(until, "seconds")
            not_tried = f"not tried: credentials wait until {when} ({reason})"
        elif (why := runner.admit(call.login, call.login_fingerprint or "")) is not None:
            not_tried = f"not tried: {why}"
        if not_tried is not None:
            lines.append(ProbeLine("login", subject, server.api_url, False, not_tried, 0))
            continue
        try:
            result, ms = probe(client, target_of(config, server))
            runner.learn(call, result.outcome)
        finally:
            runner.finished(call.login)
        if result.outcome in REFUSED_LOGIN:
            refused[call.login] = _host(server.api_url)
        detail = result.detail if result.ok else f"{result.outcome}: {result.detail}"
        lines.append(ProbeLine("login", subject, server.api_url, result.ok, detail, ms))
    return lines


def _reach_lines(config: Config, client: Client) -> list[ProbeLine]:
    lines: list[ProbeLine] = []
    reached: dict[tuple[str, bool | str], ProbeLine] = {}
    for server in config.servers:
        key = (server.api_url, config.verify_for(server))
        known = reached.get(key)
        if known is None:
            r = reach(client, *key)
            known = ProbeLine("reach", "", server.api_url, r.ok, r.detail, r.duration_ms)
            reached[key] = known
        subject = f"server {server.name}"
        lines.append(
            ProbeLine("reach", subject, server.api_url, known.ok, known.detail, known.duration_ms)
        )
    return lines

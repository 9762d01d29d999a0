"""The one-shot commands' work: `refresh` now, and `check --online` probes."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from refreshd.attempt import Attempt, probe, reach, target_of
from refreshd.client import client_for
from refreshd.config import Config, ServerConfig
from refreshd.core.ledger import Event, Kind
from refreshd.core.vicidial import Outcome
from refreshd.dispatch import Dispatcher, Job
from refreshd.runner import Runner

__all__ = ["ProbeLine", "online_check", "refresh_now"]


def refresh_now(runner: Runner, names: Sequence[str]) -> dict[str, Outcome | None]:
    """Refresh the named servers once, now, outside windows and ignoring suspensions and
    credentials waits (the operator asked). Still careful with logins: credentials are
    tried by one call first, so a wrong password costs one failed login, not one per
    server. Returns each server's outcome; None where no call was made."""
    config = runner.config
    runner.set_aside_waits()
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

        return Job(server.name, call.login, target_of(config, server), done, skipped)

    try:
        for name in names:
            dispatcher.submit(job_for(config.server(name)))
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

    kind: str  # "login" or "reach"
    subject: str
    url: str
    ok: bool
    detail: str
    duration_ms: int


def online_check(config: Config) -> list[ProbeLine]:
    """One side-effect-free login probe per credentials and VICIdial (api_url), and one
    reachability check per api_url. Never more than one login attempt per credentials
    and URL in a run: each failed one counts toward VICIdial's lock-out."""
    client = client_for(config)
    lines: list[ProbeLine] = []
    try:
        probed: set[tuple[str, str]] = set()
        refused: dict[str, str] = {}  # credentials -> the URL that refused the login
        for server in config.servers:
            key = (server.credentials, server.api_url)
            if key in probed:
                continue
            probed.add(key)
            subject = f"credentials {server.credentials} @ {_host(server.api_url)}"
            if server.credentials in refused:
                # Another web server of (likely) the same cluster already refused this
                # login; a second try would only be one more failed login toward a lock-out.
                detail = f"not tried: the login was refused at {refused[server.credentials]}"
                lines.append(ProbeLine("login", subject, server.api_url, False, detail, 0))
                continue
            result, ms = probe(client, target_of(config, server))
            if result.outcome in (Outcome.AUTH_FAILED, Outcome.LOCKED_OUT):
                refused[server.credentials] = _host(server.api_url)
            detail = result.detail if result.ok else f"{result.outcome}: {result.detail}"
            lines.append(ProbeLine("login", subject, server.api_url, result.ok, detail, ms))
        reached: dict[str, ProbeLine] = {}
        for server in config.servers:
            known = reached.get(server.api_url)
            if known is None:
                r = reach(client, server.api_url)
                known = ProbeLine("reach", "", server.api_url, r.ok, r.detail, r.duration_ms)
                reached[server.api_url] = known
            lines.append(
                ProbeLine(
                    "reach",
                    f"server {server.name}",
                    server.api_url,
                    known.ok,
                    known.detail,
                    known.duration_ms,
                )
            )
    finally:
        client.close()
    return lines

"""One call to VICIdial, start to outcome: a refresh, a login probe, a reachability check."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from refreshd.client import Client
from refreshd.clock import Clock
from refreshd.config import Config, Credentials, ServerConfig
from refreshd.core.vicidial import (
    Attempt,
    ProbeResult,
    classify,
    classify_probe,
    parse_version,
    probe_params,
    refresh_params,
    version_params,
)

__all__ = [
    "Attempt",
    "Reachability",
    "Target",
    "credentials_fingerprint",
    "probe",
    "reach",
    "refresh",
    "target_of",
]


@dataclass(frozen=True)
class Target:
    """Everything one `server_refresh` request needs. Two servers with the same `key`
    would send the identical request, so refreshd sends it once for both."""

    api_url: str
    user: str
    password: str = field(repr=False)
    source: str
    server_ip: str | None = None
    verify: bool | str = True  # the server's TLS trust: Config.verify_for

    @functools.cached_property
    def key(self) -> tuple[str, str, str, str | None, bool | str]:
        # The password counts too (hashed, so no repr of a key can show it): the same user
        # with two different passwords is two different requests, one of which may fail.
        # So does the trust: a request one CA file accepts may be refused under another.
        secret = hashlib.sha256(self.password.encode()).hexdigest()
        return (self.api_url, self.user, secret, self.server_ip, self.verify)

    def masked_params(self) -> dict[str, str]:
        """The request as `--dry-run` shows it."""
        return refresh_params(self.user, "***", self.source, self.server_ip)


def target_of(
    config: Config, server: ServerConfig, credentials: Credentials | None = None
) -> Target:
    """The request a server's refresh sends; `credentials` when already resolved."""
    login = credentials or config.credentials_for(server)
    return Target(
        api_url=server.api_url,
        user=login.user,
        password=login.password.get_secret_value(),
        source=config.client.source,
        server_ip=server.server_ip,
        verify=config.verify_for(server),
    )


def credentials_fingerprint(credentials: Credentials) -> str:
    """A slow salted hash of user and password, so a credentials wait can end when the
    password changes (even across a restart) without storing anything reversible."""
    return _fingerprint(credentials.user, credentials.password.get_secret_value())


@functools.lru_cache(maxsize=1024)
def _fingerprint(user: str, password: str) -> str:
    # Slow on purpose (~50 ms): computed once per login per process, not per reload.
    secret = f"{user}\0{password}".encode()
    return hashlib.pbkdf2_hmac("sha256", secret, b"refreshd-credentials-v1", 100_000)[:16].hex()


def refresh(client: Client, target: Target, clock: Clock) -> Attempt:
    """Send one `server_refresh` and classify what came back."""
    started = clock.now()
    raw = client.call(
        target.api_url,
        refresh_params(target.user, target.password, target.source, target.server_ip),
        verify=target.verify,
    )
    answer = classify(raw.status, raw.body, raw.transport, secrets=_secrets(client, target))
    return Attempt(answer, started, round(raw.elapsed * 1000))


def probe(client: Client, target: Target) -> tuple[ProbeResult, int]:
    """The side-effect-free login-and-permission probe; one login attempt, never repeated."""
    params = probe_params(target.user, target.password, target.source)
    raw = client.call(target.api_url, params, verify=target.verify)
    result = classify_probe(raw.status, raw.body, raw.transport, secrets=_secrets(client, target))
    return result, round(raw.elapsed * 1000)


@dataclass(frozen=True)
class Reachability:
    """`function=version`: no login, so it can be tried freely."""

    ok: bool
    detail: str
    duration_ms: int


def reach(client: Client, api_url: str, verify: bool | str | None = None) -> Reachability:
    raw = client.call(api_url, version_params(), verify=verify)
    ms = round(raw.elapsed * 1000)
    version = parse_version(raw.body) if raw.status == 200 else None
    if version:
        return Reachability(True, f"VICIdial {version}", ms)
    answer = classify(raw.status, raw.body, raw.transport, secrets=client.secrets)
    return Reachability(False, answer.detail or answer.outcome.value, ms)


def _secrets(client: Client, target: Target) -> Iterable[str]:
    """What an answer to `target` is masked with: its own password and every other
    secret the client knows (another table's password echoed by a shared page, the
    proxy's); the client's prepared set itself when it holds the password (it does: the
    config's secrets), so thousands of them are not prepared again for every call."""
    if target.password in client.secrets:
        return client.secrets
    return (target.password, *client.secrets)

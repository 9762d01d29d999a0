"""Config advice: what a valid config may still get wrong, as non-fatal warnings."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from datetime import timedelta
from urllib.parse import urlsplit

from refreshd.config.messages import place
from refreshd.config.models import Config, ServerConfig
from refreshd.core.durations import format_duration
from refreshd.core.ledger import login_key
from refreshd.core.policy import VICIDIAL_LOCKOUT

_SHORTEST_SENSIBLE_EVERY = timedelta(minutes=5)
_API_PATH = "/vicidial/non_agent_api.php"
# Places named in full when one message applies to many; the rest are counted.
_PLACES_SHOWN = 5


def is_loopback_host(host: str) -> bool:
    """localhost or a loopback address: traffic there never leaves this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_warnings(config: Config) -> list[str]:
    """Non-fatal advice about a valid config, each 'place: message'."""
    return [
        *_credentials_warnings(config),
        *_client_and_backoff_warnings(config),
        *_metrics_listen_warnings(config),
        *(
            warning
            for index, server in enumerate(config.servers)
            for warning in _server_warnings(place(("servers", index)), server)
        ),
    ]


def _credentials_warnings(config: Config) -> list[str]:
    warnings: list[str] = []
    used = {server.credentials for server in config.servers}
    for name, table in config.credentials.items():
        where = place(("credentials", name))
        if table.password is not None:
            warnings.append(
                f"{where}.password: the password is written in the config file; prefer "
                "password_env or password_file (e.g. a systemd credential)"
            )
        if name not in used:
            warnings.append(f"{where}: not used by any server")
    warnings.extend(_shared_user_warnings(config))
    return warnings


def _shared_user_warnings(config: Config) -> list[str]:
    """Tables naming one VICIdial user share one lock-out budget (VICIdial counts failed
    logins per user), which an operator splitting them may not expect."""
    tables: dict[str, list[str]] = {}
    for name, table in config.credentials.items():
        tables.setdefault(login_key(table.user), []).append(name)
    return [
        f"credentials {', '.join(names)}: all log in as VICIdial user {user!r}; they share "
        "one failed-login budget and one credentials wait (VICIdial locks a user after 10 "
        "failed logins, whatever the password tried)"
        for user, names in tables.items()
        if len(names) > 1
    ]


def _client_and_backoff_warnings(config: Config) -> list[str]:
    warnings: list[str] = []
    if not config.client.verify_tls:
        warnings.append(
            "client.verify_tls: false, so TLS certificates are not checked and anyone on the "
            "path can pose as VICIdial and read the password; install the CA instead"
        )
    auth_retry = config.backoff.auth_retry
    if auth_retry < VICIDIAL_LOCKOUT:
        warnings.append(
            f"backoff.auth_retry: {format_duration(auth_retry)} is under 15 minutes; "
            "VICIdial locks a login for every use (web screens included) after 10 failed "
            "logins within 15 minutes, and each retry of a wrong password counts"
        )
    return warnings


def _metrics_listen_warnings(config: Config) -> list[str]:
    """/metrics names every server and its outcomes, and the endpoint answers whoever
    connects: beyond loopback, only a firewall decides who that is."""
    address = config.daemon.metrics_address
    if address is None or is_loopback_host(address[0]):
        return []
    return [
        f"daemon.metrics_listen: {config.daemon.metrics_listen} serves /metrics and /healthz "
        "to other machines (every server's name and outcomes, to whoever connects); keep "
        "127.0.0.1:9464 unless Prometheus scrapes from elsewhere, and then let a firewall "
        "admit only Prometheus"
    ]


def grouped_warnings(warnings: Iterable[str]) -> list[tuple[str, int]]:
    """Each distinct message once, as 'place, place and N more: message' with the number
    of places: 1,000 servers over http:// make one log line, not 1,000."""
    places: dict[str, list[str]] = {}
    for warning in warnings:
        where, separator, message = warning.partition(": ")
        if not separator:
            where, message = "config", warning
        places.setdefault(message, []).append(where)
    grouped: list[tuple[str, int]] = []
    for message, wheres in places.items():
        named = ", ".join(wheres[:_PLACES_SHOWN])
        more = len(wheres) - _PLACES_SHOWN
        grouped.append(
            (f"{named}{f' and {more} more' if more > 0 else ''}: {message}", len(wheres))
        )
    return grouped


def _server_warnings(where: str, server: ServerConfig) -> list[str]:
    warnings: list[str] = []
    url = urlsplit(server.api_url)
    # A password sent to this machine itself never crosses a network.
    if url.scheme == "http" and not is_loopback_host(url.hostname or ""):
        warnings.append(f"{where}.api_url: http:// sends the password in clear text; use https://")
    if not url.path.endswith(_API_PATH):
        warnings.append(f"{where}.api_url: does not end in {_API_PATH}, VICIdial's API script")
    if server.every is not None and server.every < _SHORTEST_SENSIBLE_EVERY:
        warnings.append(
            f"{where}.every: {format_duration(server.every)} is under 5 minutes; each "
            "refresh makes every telephony server rebuild and reload its Asterisk "
            "configuration, which takes about a minute"
        )
    return warnings

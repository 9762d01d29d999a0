"""Config advice: what a valid config may still get wrong, as non-fatal warnings."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from refreshd.binding import schedule_of
from refreshd.config.messages import place
from refreshd.config.models import Config, ServerConfig
from refreshd.core.durations import format_duration
from refreshd.core.ledger import login_key
from refreshd.core.planning import never_runs
from refreshd.core.policy import VICIDIAL_LOCKOUT

_SHORTEST_SENSIBLE_EVERY = timedelta(minutes=5)
SHORTEST_SAFE_PASSWORD = 8
"""Passwords shorter than this are warned about: guessable, and redacting one everywhere
it appears (as logs do, whatever its length) also masks innocent text such as numbers."""
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


_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


def ignored_proxies_note(environ: Mapping[str, str]) -> str:
    """A note naming the proxy variables set in `environ`, which refreshd ignores on purpose
    (README, Proxies): "" when none is set."""
    # Named as set (https_proxy is as common as HTTPS_PROXY): the operator looks for that.
    found = sorted(
        (name for name in environ if name.upper() in _PROXY_VARIABLES and environ[name]),
        key=lambda name: (_PROXY_VARIABLES.index(name.upper()), name),
    )
    if not found:
        return ""
    return f" ({', '.join(found)} in the environment: ignored; set [client] proxy to use one)"


def config_warnings(config: Config, *, now: datetime | None = None) -> list[str]:
    """Non-fatal advice about a valid config, each 'place: message'. With `now` (the
    commands and the daemon pass it), also the servers that can never run from then on."""
    return [
        *_credentials_warnings(config),
        *_short_password_warnings(config),
        *_client_and_backoff_warnings(config),
        *_metrics_listen_warnings(config),
        *_notify_warnings(config),
        *(
            warning
            for index, server in enumerate(config.servers)
            for warning in _server_warnings(place(("servers", index)), server)
        ),
        *(_never_run_warnings(config, now) if now is not None else ()),
    ]


def _never_run_warnings(config: Config, now: datetime) -> list[str]:
    """Servers whose blackouts cover every window: valid, but they would never refresh."""
    warnings: list[str] = []
    # never_runs depends on the zone, the windows and the blackouts only, which a fleet of
    # 10,000 servers shares a few of: one search each, not one schedule per server.
    answers: dict[tuple[object, ...], str | None] = {}
    for index, server in enumerate(config.servers):
        shape = (server.zone, server.windows, config.blackouts_for(server.name))
        if shape not in answers:
            answers[shape] = never_runs(schedule_of(config, server), now)
        why = answers[shape]
        if why is not None:
            warnings.append(
                f"{place(('servers', index))} ({server.name}): will never run: {why}; "
                "change its windows or the blackouts"
            )
    return warnings


def _credentials_warnings(config: Config) -> list[str]:
    warnings: list[str] = []
    used = {server.credentials for server in config.servers}
    for name, table in config.credentials.items():
        where = place(("credentials", name))
        if table.password is not None and not config.set_by_environment(
            "credentials", name, "password"
        ):
            warnings.append(
                f"{where}.password: the password is written in the config file; prefer "
                "password_env or password_file (e.g. a systemd credential)"
            )
        if name not in used:
            warnings.append(f"{where}: not used by any server")
    warnings.extend(_shared_user_warnings(config))
    return warnings


def _short_password_warnings(config: Config) -> list[str]:
    return [
        f"{place(('credentials', name))}: the password has fewer than "
        f"{SHORTEST_SAFE_PASSWORD} characters; it is easy to guess, and refreshd masks it "
        "wherever it appears in its output (so text that merely contains it is masked "
        "too); set a longer one, in VICIdial and here"
        for name, table in config.credentials.items()
        # A command that reads no password (status, plan) cannot tell: no warning there.
        if table.password_read
        and len(table.resolved(name).password.get_secret_value()) < SHORTEST_SAFE_PASSWORD
    ]


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
            "path can pose as VICIdial and read the password; set ca_file to the CA's PEM "
            "file (a self-signed certificate itself will do) and remove verify_tls"
        )
        if config.client.ca_file or any(server.ca_file for server in config.servers):
            warnings.append(
                "client.verify_tls: false makes every ca_file unused (nothing is checked); "
                "remove verify_tls = false to check certificates against them"
            )
    proxy = urlsplit(config.client.proxy or "")
    if proxy.password and not config.set_by_environment("client", "proxy"):
        warnings.append(
            "client.proxy: holds the proxy's password; prefer setting it in the environment "
            "(REFRESHD_CLIENT__PROXY) so the config file holds no secret"
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
    if server.ping_url is not None:
        warnings.append(f"{where}.ping_url: {_INLINE_URL} ping_url_env")
    return warnings


# Like a password: the URL is the check's or the webhook's key.
_INLINE_URL = "the URL, a secret, is written in the config file; prefer"


def _notify_warnings(config: Config) -> list[str]:
    return [
        f"{place(('notify', index))}.url: {_INLINE_URL} url_env or url_file"
        for index, table in enumerate(config.notify)
        if table.url is not None
    ]

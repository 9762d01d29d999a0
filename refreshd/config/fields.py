"""The config's field types: each value's rule and its plain-language refusal."""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
import ssl
import zoneinfo
from datetime import timedelta
from pathlib import Path
from typing import Annotated, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, PlainValidator
from pydantic_core import PydanticCustomError

from refreshd.core.durations import format_duration, parse_duration
from refreshd.core.windows import AbsoluteWindow, WeeklyWindow, parse_blackout_window, parse_window

# VICIdial's input filters (VICIDIAL_API.md): user and pass keep only these characters,
# source keeps only letters and digits and must keep 2 to 20 of them.
LOGIN_KEEPS = re.compile(r"[A-Za-z0-9_-]+")
_SOURCE_DROPS = re.compile(r"[^A-Za-z0-9]")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_T = TypeVar("_T")


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError("a duration cannot be negative")
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a duration: a number of seconds or a string like '30s' or '10m'")
    return parse_duration(value)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


def between(low: timedelta, high: timedelta) -> AfterValidator:
    """A duration within [low, high]: past the bounds a value is a typo, and far enough
    past them it would overflow the date arithmetic it is added to."""

    def check(value: timedelta) -> timedelta:
        if value < low:
            raise ValueError(f"must be at least {format_duration(low)}")
        if value > high:
            raise ValueError(f"must be at most {format_duration(high)}")
        return value

    return AfterValidator(check)


def _not_bool(value: object) -> object:
    # TOML's true is a Python bool, and bool is an int: refuse it where a count is meant.
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true or false")
    return value


def _known_zone(value: str) -> str:
    if not is_known_zone(value):
        raise ValueError(f"unknown time zone {value!r}{_zone_hint(value)}")
    return value


def is_known_zone(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        zoneinfo.ZoneInfo(value)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


@functools.cache
def _all_zones() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


def _zone_hint(value: str) -> str:
    zones = _all_zones()
    same_but_case = [zone for zone in zones if zone.lower() == value.lower()]
    close = same_but_case or difflib.get_close_matches(value, zones, n=1, cutoff=0.8)
    if close:
        return f"; did you mean {close[0]!r}?"
    return "; use an IANA name like 'America/New_York', 'Europe/Paris' or 'UTC'"


def _name(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r}: use only letters, digits, '.', '_' and '-' "
            "(names appear in logs, metrics and on the command line)"
        )
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _vicidial_user(value: str) -> str:
    # Never quote the value nor the characters wrong in it: a user with a character
    # VICIdial drops is most often `user:password` (curl style) or a password pasted here.
    if not value:
        raise ValueError("must not be empty")
    if ":" in value:
        raise ValueError(
            "looks like user:password (curl style); give only the VICIdial user here and "
            "the password in password_env or password_file (the value is not shown: it may "
            "hold the password)"
        )
    if not LOGIN_KEEPS.fullmatch(value):
        raise ValueError(
            "contains characters VICIdial removes from the user before checking the login "
            "(it keeps only letters, digits, '-' and '_'), so this user can never log in; "
            "give the VICIdial user name without them (the value is not shown: it may "
            "hold the password)"
        )
    return value


def _source(value: str) -> str:
    kept = _SOURCE_DROPS.sub("", value)
    if not 2 <= len(kept) <= 20:
        raise ValueError(
            f"{value!r} keeps {len(kept)} letters and digits; VICIdial drops every other "
            "character of 'source' before checking it and needs 2 to 20 letters and digits "
            "(it is what VICIdial's API log shows as the caller), e.g. 'refreshd'"
        )
    return value


def _api_url(value: str) -> str:
    # Never quote the URL in an error: a wrong one may carry a password.
    example = "e.g. 'https://dialer.example.com/vicidial/non_agent_api.php'"
    if not value or any(char.isspace() for char in value):
        raise ValueError(f"must be a URL without spaces, {example}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- parsing the port is what validates it
    except ValueError:
        raise ValueError(f"is not a valid URL, {example}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must start with https:// (or http://), {example}")
    if not parts.hostname:
        raise ValueError(f"has no host name, {example}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "must not contain a user or password (user:password@host): give them in a "
            "[credentials.NAME] table and name it in the server's 'credentials'"
        )
    if "?" in value:
        raise ValueError(
            "must not contain a query string ('?...'): refreshd adds the parameters itself; "
            "give the login in a [credentials.NAME] table"
        )
    if "#" in value:
        raise ValueError(f"must not contain a '#' fragment, {example}")
    return value


def not_blank_path(value: object) -> object:
    # Path("") is ".", the current directory: refuse the empty string before it gets there.
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty: give a file's path")
    return value


def ca_file(value: Path, config_dir: Path | None) -> Path:
    """The CA file as an absolute path (a relative one is next to the config file), once
    OpenSSL has read at least one certificate from it; ValueError saying what to fix."""
    full = value if value.is_absolute() else (config_dir or Path.cwd()) / value
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        # What the client will do with it, so a file accepted here is one it can use.
        context.load_verify_locations(cafile=full)
    except FileNotFoundError:
        raise ValueError(f"{full}: no such file; {_CA_HINT}") from None
    except IsADirectoryError:
        raise ValueError(f"{full}: is a directory; {_CA_HINT}") from None
    except ssl.SSLError:
        raise ValueError(f"{full}: no PEM certificate in it; {_CA_HINT}{_DER_HINT}") from None
    except OSError as error:
        raise ValueError(f"{full}: cannot read it: {error.strerror or error}") from None
    if context.cert_store_stats()["x509"] == 0:
        raise ValueError(f"{full}: no certificate in it; {_CA_HINT}")
    return full


_CA_HINT = (
    "give the PEM file ('-----BEGIN CERTIFICATE-----') of the CA that signed VICIdial's "
    "certificate, or the self-signed certificate itself"
)
_DER_HINT = (
    " (a binary .cer/.der file converts with: openssl x509 -inform der -in ca.cer -out ca.pem)"
)


def _proxy_url(value: str) -> str:
    # Never quote it: it may carry the proxy's password.
    example = "e.g. 'http://proxy.example.com:3128' or 'http://USER:PASSWORD@HOST:PORT'"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"is not a valid URL, {example}") from None
    if parts.scheme != "http":
        raise ValueError(
            "must start with http:// (an HTTP proxy; https:// API URLs pass through it in an "
            f"encrypted CONNECT tunnel), {example}"
        )
    if not parts.hostname or port is None:
        raise ValueError(f"needs a host and a port, {example}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"must be only scheme, host and port, {example}")
    return value


def proxy_secrets(url: str | None) -> frozenset[str]:
    """The proxy's password in the forms an answer may echo it (as written, URL-decoded)."""
    password = urlsplit(url).password if url else None
    return frozenset({password, unquote(password)}) if password else frozenset()


def proxy_shown(url: str | None) -> str:
    """The proxy as logs and `check` show it: no user or password, "none" without one."""
    if not url:
        return "none"
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{parts.scheme}://{host}:{parts.port}"


def _ip_address(value: str) -> str:
    # Kept as written, not normalised: VICIdial compares it with its servers table as text.
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address; give the server's IP as VICIdial's Servers "
            "screen lists it, e.g. '10.0.0.11'"
        ) from None
    return value


_LISTEN_EXAMPLES = "e.g. '127.0.0.1:9464' or '[::1]:9464', or \"\" to turn the metrics endpoint off"
# A host name as bind() resolves it: dot-separated labels of letters, digits and inner '-'.
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _listen_address(value: str) -> str:
    if value == "":
        return value
    address = split_listen(value)
    if address is None:
        raise ValueError(f"{value!r}: write HOST:PORT, {_LISTEN_EXAMPLES}")
    host = address[0]
    if ":" in host:  # IPv6, already checked by split_listen
        return value
    if all(part.isdigit() for part in host.split(".")):
        # All numbers: meant as an IPv4 address, which the daemon could never bind if bad.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"{value!r}: {host} is not an IPv4 address (four numbers from 0 to 255); "
                f"use an address of this machine, {_LISTEN_EXAMPLES}"
            ) from None
    elif len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise ValueError(
            f"{value!r}: {host!r} is neither an IP address nor a host name; use an address "
            f"of this machine, {_LISTEN_EXAMPLES}"
        )
    return value


def split_listen(value: str) -> tuple[str, int] | None:
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isascii() or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif ":" in host or any(char.isspace() for char in host):
        return None
    number = int(port)
    return (host, number) if number <= 65535 else None


def _window(value: object) -> WeeklyWindow:
    if isinstance(value, WeeklyWindow):
        return value
    if not isinstance(value, str):
        raise ValueError("a window must be a string, e.g. 'mon-fri 02:00-04:00'")
    return _parsed_window(value)  # WindowError is a ValueError with a user-facing message


# A fleet repeats a handful of window texts thousands of times; the result is immutable.
_parsed_window = functools.lru_cache(maxsize=1024)(parse_window)


def _blackout_window(value: object) -> WeeklyWindow | AbsoluteWindow:
    if isinstance(value, WeeklyWindow | AbsoluteWindow):
        return value
    if not isinstance(value, str):
        raise ValueError(
            "a blackout window must be a string, e.g. 'mon-fri 09:00-17:00' or "
            "'2026-12-24T00:00/2026-12-27T00:00'"
        )
    return parse_blackout_window(value)


def _window_text(window: WeeklyWindow | AbsoluteWindow) -> str:
    return window.text


def at_least_one(values: tuple[_T, ...]) -> tuple[_T, ...]:
    # Not Field(min_length=1): pydantic counts only the items that validated, so one bad
    # item would also report the list as empty.
    if not values:
        raise PydanticCustomError("too_short", "must not be empty")
    return values


# The types the models declare their fields with.
Duration = Annotated[
    timedelta,
    PlainValidator(_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
Count = Annotated[int, BeforeValidator(_not_bool)]
TimeZoneName = Annotated[str, AfterValidator(_known_zone)]
Name = Annotated[str, AfterValidator(_name)]
Window = Annotated[WeeklyWindow, PlainValidator(_window), PlainSerializer(_window_text)]
BlackoutWindow = Annotated[
    WeeklyWindow | AbsoluteWindow,
    PlainValidator(_blackout_window),
    PlainSerializer(_window_text),
]
ApiUrl = Annotated[str, AfterValidator(_api_url)]
ProxyUrl = Annotated[str, AfterValidator(_proxy_url)]
IpAddress = Annotated[str, AfterValidator(_ip_address)]
ListenAddress = Annotated[str, AfterValidator(_listen_address)]
Source = Annotated[str, AfterValidator(_source)]
VicidialUser = Annotated[str, AfterValidator(_vicidial_user)]
NonEmpty = Annotated[str, AfterValidator(_non_empty)]

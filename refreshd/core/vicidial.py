"""The VICIdial non-agent API as data: request parameters and answer classification (pure)."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from refreshd.core.secrets import mask

__all__ = [
    "MAX_DETAIL",
    "Answer",
    "Attempt",
    "Outcome",
    "ProbeResult",
    "Transport",
    "classify",
    "classify_probe",
    "parse_version",
    "probe_params",
    "redact",
    "refresh_params",
    "version_params",
]

# How much of an answer we ever keep for a log line or the history table.
MAX_DETAIL = 200


class Outcome(enum.StrEnum):
    """Exactly one of these ends every call; used in logs, metrics and state."""

    OK = "ok"
    AUTH_FAILED = "auth_failed"
    LOCKED_OUT = "locked_out"
    IP_BLOCKED = "ip_blocked"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    TLS_REJECTED = "tls_rejected"
    PROXY_REFUSED = "proxy_refused"
    TRANSIENT = "transient"
    UNEXPECTED = "unexpected"
    # Not an answer: a run whose call's answer was lost, found done in the cluster's
    # database (system_settings.reload_timestamp since the call's start). No call is made.
    SETTLED = "settled"


class Transport(enum.StrEnum):
    """What went wrong below HTTP (never exception text: it may hold the URL)."""

    TIMEOUT = "timeout"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_RESET = "connection_reset"
    CONNECTION_FAILED = "connection_failed"
    TLS_ERROR = "tls_error"
    TLS_UNTRUSTED = "tls_untrusted"
    TLS_NAME_MISMATCH = "tls_name_mismatch"
    TLS_EXPIRED = "tls_expired"
    PROXY_REFUSED = "proxy_refused"  # the proxy answered CONNECT with no tunnel: its status


_NO_FALLBACK = "never falls back to no verification"
_TRANSPORT_TEXT = {
    Transport.TIMEOUT: "timed out",
    Transport.CONNECTION_REFUSED: "connection refused",
    Transport.CONNECTION_RESET: "connection reset or closed before a complete answer",
    Transport.CONNECTION_FAILED: "could not connect (name resolution or network unreachable)",
    Transport.TLS_ERROR: "TLS handshake failed before any certificate was checked (a reset or a "
    f"protocol mismatch); retried, {_NO_FALLBACK}",
    Transport.TLS_UNTRUSTED: "TLS certificate not trusted (self-signed or an unknown CA): set "
    f"ca_file in [client] or in the server's table to the CA's PEM file; {_NO_FALLBACK}",
    Transport.TLS_NAME_MISMATCH: "TLS certificate is for another name than api_url's host: put "
    f"a name the certificate lists in api_url, or reissue it; {_NO_FALLBACK}",
    Transport.TLS_EXPIRED: "TLS certificate expired or not yet valid: renew it on the VICIdial "
    f"web server (or fix this machine's clock); {_NO_FALLBACK}",
}

# Certificate refusals: retrying cannot heal them (someone must install a CA, fix a name or
# renew a certificate), so they suspend the server instead of retrying every few seconds.
_CERTIFICATE_REFUSED = frozenset(
    {Transport.TLS_UNTRUSTED, Transport.TLS_NAME_MISMATCH, Transport.TLS_EXPIRED}
)

# Failures that end a call before any byte of the request left: no login was counted.
_NEVER_SENT = frozenset(
    {
        Transport.CONNECTION_REFUSED,
        Transport.CONNECTION_FAILED,
        Transport.TLS_ERROR,
        Transport.PROXY_REFUSED,
    }
    | _CERTIFICATE_REFUSED
)

# HTTP 407 comes from a proxy only (VICIdial never sends it): to CONNECT for an https://
# api_url, or as the answer itself for an http:// one sent through the proxy.
_PROXY_AUTH = 407
# The proxy's own trouble reaching api_url's host, or its load: these pass, so they are
# retried. Any other refusal is the proxy's configuration (its credentials, its rules, no
# CONNECT at all), which a retry cannot change: the server is suspended. Not a credentials
# wait: VICIdial's login was never tried.
_PROXY_PASSING = frozenset({408, 429, 502, 503, 504})
_PROXY_FIXES = {
    _PROXY_AUTH: "its credentials are missing or wrong: fix USER:PASSWORD in [client] proxy "
    "(or REFRESHD_CLIENT__PROXY); VICIdial's login was not tried",
    403: "its rules forbid api_url's host or port: have them allowed on the proxy",
    405: "it does not tunnel https:// (CONNECT): name a proxy that does in [client] proxy",
    501: "it does not tunnel https:// (CONNECT): name a proxy that does in [client] proxy",
}


def refresh_params(
    user: str, password: str, source: str, server_ip: str | None = None
) -> dict[str, str]:
    """The parameters of a `server_refresh` call that flags every server for a rebuild."""
    params = {
        "function": "server_refresh",
        "stage": "REFRESH",
        "user": user,
        "pass": password,
        "source": source,
    }
    if server_ip:
        params["server_ip"] = server_ip
    return params


def probe_params(user: str, password: str, source: str) -> dict[str, str]:
    """`server_refresh` without `stage`: VICIdial checks login and permission, then refuses
    with YOU MUST USE ALL REQUIRED FIELDS before touching any server, a side-effect-free probe."""
    return {"function": "server_refresh", "user": user, "pass": password, "source": source}


def version_params() -> dict[str, str]:
    """`function=version` needs no login: a cheap reachability check."""
    return {"function": "version"}


@dataclass(frozen=True)
class Answer:
    """What one call came to, ready for the policy, the log and the state store."""

    outcome: Outcome
    detail: str  # short, redacted, human: what was seen
    http_status: int | None = None
    servers_flagged: int | None = None
    reached: bool = True
    """Whether the request may have reached VICIdial's PHP (and so counted a login): only
    a refused or failed connection, or a failed TLS handshake, prove it did not."""

    @property
    def unreadable(self) -> bool:
        """No readable answer although the request may have been read: for a login not
        yet proven, it may have been a failed one."""
        return self.reached and self.outcome in (Outcome.TRANSIENT, Outcome.UNEXPECTED)


@dataclass(frozen=True)
class Attempt:
    """One refresh call: its answer, when it was sent and how long it took."""

    answer: Answer
    started_at: datetime
    duration_ms: int
    reload_timestamp: datetime | None = None
    """A settled run's (Outcome.SETTLED): the cluster's reload stamp that proved it."""


_TAG = re.compile(r"<[^>]*>")
_NOT_WORD = re.compile(r"[^0-9A-Z|]+")
_FLAGGED = re.compile(r"\|\s*(\d+)\s*$")
_VICIDIAL_LINE = re.compile(r"^(SUCCESS|ERROR|VERSION)\s*:", re.IGNORECASE)

# Meanings, matched on a line folded to upper-case words: tolerant of case, spacing and
# separators, never of the whole line. Order matters: the lock-out text also says "login".
_ERROR_MEANINGS: tuple[tuple[str, Outcome], ...] = (
    ("TOO MANY LOGIN ATTEMPTS", Outcome.LOCKED_OUT),
    ("LOGIN INCORRECT", Outcome.AUTH_FAILED),
    ("INVALID USERNAME OR PASSWORD", Outcome.AUTH_FAILED),
    ("IP ADDRESS IS NOT ALLOWED", Outcome.IP_BLOCKED),
    ("IPBLOCK", Outcome.IP_BLOCKED),
    ("DOES NOT HAVE PERMISSION", Outcome.PERMISSION_DENIED),
    ("SERVER IP NOT FOUND", Outcome.NOT_FOUND),
    ("YOU MUST USE ALL REQUIRED FIELDS", Outcome.BAD_REQUEST),
    ("INVALID SOURCE", Outcome.BAD_REQUEST),
    ("NO FUNCTION SPECIFIED", Outcome.BAD_REQUEST),
)


def _fold(line: str) -> str:
    return " " + _NOT_WORD.sub(" ", line.upper()).strip() + " "


def _lines(body: str) -> Iterable[str]:
    """The body's text lines, HTML tags turned into line breaks (PHP warnings come as
    `<b>Warning</b>: ...<br />` before the real line, sometimes on the same physical line)."""
    for raw in _TAG.sub("\n", body).splitlines():
        # A byte order mark is not whitespace to str.strip(); PHP files saved with one
        # put it before the answer.
        line = raw.strip().lstrip("\ufeff").strip()
        if line:
            yield line


def _meaning(line: str) -> Outcome | None:
    folded = _fold(line)
    if folded.startswith(" SUCCESS "):
        return Outcome.OK if " REFRESH" in folded else None
    if folded.startswith(" ERROR "):
        for words, outcome in _ERROR_MEANINGS:
            if f" {words} " in folded:
                return outcome
    return None


def classify(
    status: int | None,
    body: str | None,
    transport: Transport | None = None,
    *,
    secrets: Iterable[str] = (),
) -> Answer:
    """One call's outcome from what came back. Never raises, whatever the bytes."""
    if transport is Transport.PROXY_REFUSED or status == _PROXY_AUTH:
        return _proxy_refusal(status)
    if transport is not None:
        reached = transport not in _NEVER_SENT
        outcome = Outcome.TLS_REJECTED if transport in _CERTIFICATE_REFUSED else Outcome.TRANSIENT
        return Answer(outcome, _TRANSPORT_TEXT[transport], status, reached=reached)
    text = body or ""
    if status is not None and not 200 <= status < 300:
        outcome = _status_outcome(status)
        return Answer(outcome, f"HTTP {status}: {_snippet(text, secrets)}".rstrip(": "), status)
    if not text.strip():
        return Answer(Outcome.TRANSIENT, "empty answer", status)
    first_vicidial: str | None = None
    for line in _lines(text):
        if not _VICIDIAL_LINE.match(line):
            continue
        first_vicidial = first_vicidial or line
        meaning = _meaning(line)
        if meaning is None:
            continue
        flagged = None
        if meaning is Outcome.OK:
            match = _FLAGGED.search(line)
            flagged = int(match.group(1)) if match else None
        return Answer(meaning, _snippet(line, secrets), status, flagged)
    return Answer(Outcome.UNEXPECTED, _snippet(first_vicidial or text, secrets), status)


def _proxy_refusal(status: int | None) -> Answer:
    """The proxy answered instead of VICIdial, which it never reached: no login counted."""
    shown = f"HTTP {status}" if status is not None else "no status"
    if status in _PROXY_PASSING:
        detail = (
            f"the proxy could not reach api_url's host ({shown}): check that the host is up "
            "and that the proxy can reach it"
        )
        return Answer(Outcome.TRANSIENT, detail, status, reached=False)
    fix = _PROXY_FIXES.get(status or 0, "check [client] proxy and the proxy's own log")
    detail = f"the proxy refused to connect to api_url's host ({shown}): {fix}"
    return Answer(Outcome.PROXY_REFUSED, detail, status, reached=False)


def _status_outcome(status: int) -> Outcome:
    if status == 404:
        return Outcome.NOT_FOUND
    if status in (408, 425, 429) or status >= 500:
        return Outcome.TRANSIENT
    return Outcome.UNEXPECTED


@dataclass(frozen=True)
class ProbeResult:
    """`check --online`: did the side-effect-free probe prove login and permission?"""

    ok: bool
    outcome: Outcome
    detail: str


def classify_probe(
    status: int | None,
    body: str | None,
    transport: Transport | None = None,
    *,
    secrets: Iterable[str] = (),
) -> ProbeResult:
    """The probe passes when VICIdial gets as far as asking for the missing `stage`."""
    answer = classify(status, body, transport, secrets=secrets)
    if answer.outcome is Outcome.BAD_REQUEST and " REQUIRED FIELDS " in _fold(answer.detail):
        return ProbeResult(True, Outcome.OK, "login and server_refresh permission accepted")
    if answer.outcome is Outcome.OK:
        # Only a server that ignores `stage` answers SUCCESS here; it did flag the servers.
        return ProbeResult(True, Outcome.OK, "accepted (this server ignores 'stage': it refreshed)")
    return ProbeResult(False, answer.outcome, answer.detail)


def parse_version(body: str | None) -> str | None:
    """The VICIdial version from a `function=version` answer, None if this is not one."""
    for line in _lines(body or ""):
        if line.upper().startswith("VERSION:"):
            fields = line.split("|", 2)
            return fields[0].split(":", 1)[1].strip() + (
                f" build {fields[1].split(':', 1)[1].strip()}"
                if len(fields) > 1 and ":" in fields[1]
                else ""
            )
    return None


_QUERY_SECRET = re.compile(r"((?:^|[?&;\s])pass(?:word)?=)[^&\s]*", re.IGNORECASE)
_ECHOED_PASSWORD = re.compile(r"(\|[^|\r\n]*\|)[^|\r\n]*(\|\s*BAD\s*\|)", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Text with every secret we know of, and every place VICIdial puts one, masked."""
    out = mask(text, secrets)  # core/secrets.py: every form, cheaply among thousands
    out = _ECHOED_PASSWORD.sub(r"\1***\2", out)
    return _QUERY_SECRET.sub(r"\1***", out)


def _snippet(text: str, secrets: Iterable[str]) -> str:
    flat = " ".join(text.split())
    return redact(flat, secrets)[:MAX_DETAIL]

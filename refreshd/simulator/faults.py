"""Fault modes: which exist, their settings, and what each does to an API answer on the wire."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from refreshd.clock import system_clock
from refreshd.simulator.rules import Answer

__all__ = [
    "FAULT_MODES",
    "Fault",
    "Wire",
    "accepts_gzip",
    "answer_without_php",
    "deliver",
    "make_fault",
]

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
    "gzip",  # the answer gzipped when Accept-Encoding allows it, as mod_deflate does
    "gzip_always",  # gzipped whatever the client accepts: a misconfigured server
    "trickle_headers",  # status line and headers a byte per interval, then the body
    "continue_forever",  # 100 Continue every interval, never a final answer, no PHP
    "slow_after_login",  # the PHP runs (login counted), then the answer waits `delay`
)
# Modes in which the PHP still runs (side effects happen); the others answer
# before reaching it, so no login is counted and no flag changes.
_EXECUTING_MODES = frozenset(
    {
        "none",
        "latency",
        "php_warning",
        "trickle",
        "gzip",
        "gzip_always",
        "trickle_headers",
        "slow_after_login",
    }
)

TIMEOUT_FAULT_SECONDS = 30.0
TRICKLE_SECONDS_PER_BYTE = 0.5
CONTINUE_SECONDS = 0.2
# continue_forever's bound, so no thread serves one request for ever.
CONTINUE_FOREVER_SECONDS = 120.0
# Longer than any sensible client timeout: "VICIdial is slower than client.timeout".
SLOW_AFTER_LOGIN_SECONDS = 30.0
# A fault's `interval` (seconds between two writes) and `delay` (seconds the PHP's
# answer is held) apply to these modes only; unset, they take these defaults.
_INTERVAL_DEFAULTS = {
    "trickle": TRICKLE_SECONDS_PER_BYTE,
    "trickle_headers": TRICKLE_SECONDS_PER_BYTE,
    "continue_forever": CONTINUE_SECONDS,
}
_DELAY_DEFAULTS = {"slow_after_login": SLOW_AFTER_LOGIN_SECONDS}
BIG_BODY_BYTES = 10 * 1024 * 1024

LOGIN_PAGE_PATH = "/login.php"
HTML = "text/html; charset=UTF-8"

Headers = Sequence[tuple[str, str]]


class Wire(Protocol):
    """The connection one API request came in on, as the fault modes use it."""

    def head(self, status: int, length: int, extra: Headers = ()) -> bytes:
        """The status line and headers of an answer with a body of `length` bytes."""
        ...

    def send(self, status: int, body: bytes, *, extra: Headers = ()) -> None: ...

    def write(self, data: bytes) -> None: ...

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True (at once) when the simulator is stopping."""
        ...

    def abort(self) -> None:
        """Close the connection with a TCP reset."""
        ...

    @property
    def accept_encoding(self) -> str:
        """The request's Accept-Encoding header; empty when it has none."""
        ...


@dataclass
class Fault:
    """A fault set on one path (or on every path when `path` is None)."""

    mode: str
    path: str | None
    remaining: int | None  # calls left before it clears itself; None: until cleared
    latency: float  # seconds added before the request reaches the PHP, with any mode
    interval: float | None = None  # None: the mode's default
    delay: float | None = None  # None: the mode's default

    @property
    def runs_php(self) -> bool:
        return self.mode in _EXECUTING_MODES

    @property
    def interval_seconds(self) -> float:
        return _INTERVAL_DEFAULTS[self.mode] if self.interval is None else self.interval

    @property
    def delay_seconds(self) -> float:
        return _DELAY_DEFAULTS[self.mode] if self.delay is None else self.delay

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "path": self.path,
            "remaining": self.remaining,
            "latency": self.latency,
            "interval": self.interval,
            "delay": self.delay,
        }


def make_fault(
    mode: str,
    *,
    path: str | None = None,
    count: int | None = None,
    latency: float = 0.0,
    interval: float | None = None,
    delay: float | None = None,
) -> Fault:
    """A checked fault; values may come straight from JSON (POST /_sim/faults), so their
    types are checked too. ValueError says what was wrong."""
    if mode not in FAULT_MODES:
        raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(FAULT_MODES)}")
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
    return Fault(
        mode,
        path,
        count,
        float(latency),
        interval=_mode_seconds("interval", interval, mode, _INTERVAL_DEFAULTS),
        delay=_mode_seconds("delay", delay, mode, _DELAY_DEFAULTS),
    )


def _mode_seconds(name: str, value: object, mode: str, defaults: dict[str, float]) -> float | None:
    if value is None:
        return None
    if mode not in defaults:
        raise ValueError(f"fault {name} applies only to modes {', '.join(defaults)}")
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"fault {name} must be more than zero seconds")
    return float(value)


# -- modes that answer before the PHP runs ---------------------------------------------

_HTML_ERROR_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Database Error</title></head>\n"
    "<body><h1>Service temporarily unavailable</h1>\n"
    "<p>MySQL connection failed: Too many connections</p></body></html>\n"
)
_STATUS_FAULTS = {"http500": 500, "http502": 502, "http503": 503, "http429": 429}


def answer_without_php(fault: Fault, wire: Wire) -> None:
    """Answer in place of the PHP, which never sees the request."""
    mode = fault.mode
    if mode in _STATUS_FAULTS:
        status = _STATUS_FAULTS[mode]
        extra = [("Retry-After", "1")] if status == 429 else []
        wire.send(status, error_page(status).encode(), extra=extra)
    elif mode == "html":
        wire.send(200, _HTML_ERROR_PAGE.encode())
    elif mode == "empty":
        wire.send(200, b"")
    elif mode == "redirect_login":
        wire.send(302, error_page(302).encode(), extra=[("Location", LOGIN_PAGE_PATH)])
    elif mode == "big":
        wire.send(200, _big_body())
    elif mode == "reset":
        # Half a status block, then RST instead of FIN: the client sees a reset.
        with contextlib.suppress(OSError):
            wire.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/")
        wire.abort()
    elif mode == "timeout":
        wire.wait(TIMEOUT_FAULT_SECONDS)
        wire.abort()
    elif mode == "continue_forever":
        _continue_forever(wire, fault.interval_seconds)
    else:  # pragma: no cover - FAULT_MODES and this dispatch are kept in step
        raise AssertionError(mode)


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _continue_forever(wire: Wire, interval: float) -> None:
    """Informational answers, each a sign of life that resets a per-read timeout, and
    never a final one; until the client hangs up, the simulator stops or
    CONTINUE_FOREVER_SECONDS have passed. Then a reset."""
    deadline = system_clock.monotonic() + CONTINUE_FOREVER_SECONDS
    while system_clock.monotonic() < deadline:
        try:
            wire.write(_CONTINUE)
        except OSError:  # the client has gone
            break
        if wire.wait(interval):
            break
    wire.abort()


# -- modes in which the PHP runs ------------------------------------------------------

_PHP_WARNING = (
    "<br />\n<b>Warning</b>:  mysqli_fetch_row() expects parameter 1 to be mysqli_result, "
    "bool given in <b>/srv/www/htdocs/vicidial/non_agent_api.php</b> on line <b>1290</b>"
    "<br />\n<br />\n<b>Notice</b>:  Undefined offset: 0 in "
    "<b>/srv/www/htdocs/vicidial/non_agent_api.php</b> on line <b>1291</b><br />\n"
)


def deliver(fault: Fault | None, answer: Answer, wire: Wire) -> None:
    """Send the PHP's answer, as the fault (if any) bends it."""
    status, body = answer.status, answer.body.encode("utf-8")
    if fault is None or fault.mode in ("none", "latency"):
        wire.send(status, body)
    elif fault.mode == "php_warning":
        wire.send(status, _PHP_WARNING.encode() + body)
    elif fault.mode in ("gzip", "gzip_always"):
        _send_gzipped(wire, status, body, always=fault.mode == "gzip_always")
    elif fault.mode == "trickle":
        wire.write(wire.head(status, len(body)))
        if not _drip(wire, body, fault.interval_seconds):
            wire.abort()
    elif fault.mode == "trickle_headers":
        # Every read gets a byte well within a per-read timeout: only a total deadline ends it.
        if _drip(wire, wire.head(status, len(body)), fault.interval_seconds):
            wire.write(body)
        else:
            wire.abort()
    elif fault.mode == "slow_after_login":
        # The login is already counted (failed or good) when the client gives up waiting.
        if wire.wait(fault.delay_seconds):
            wire.abort()
        else:
            wire.send(status, body)
    else:  # pragma: no cover - _EXECUTING_MODES and this dispatch are kept in step
        raise AssertionError(fault.mode)


def _send_gzipped(wire: Wire, status: int, body: bytes, *, always: bool) -> None:
    extra: list[tuple[str, str]] = []
    if always or accepts_gzip(wire.accept_encoding):
        body = gzip.compress(body, mtime=0)
        extra.append(("Content-Encoding", "gzip"))
    if not always:
        # What mod_deflate adds to every answer it may compress.
        extra.append(("Vary", "Accept-Encoding"))
    wire.send(status, body, extra=extra)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows a gzip body (RFC 9110 section 12.5.3);
    no header means no compression, as Apache and nginx read it."""
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        quality = 1.0
        name, _, value = params.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                quality = 0.0
        qualities[coding.strip().lower()] = quality
    for coding in ("gzip", "x-gzip"):
        if coding in qualities:
            return qualities[coding] > 0
    return qualities.get("*", 0.0) > 0


def _drip(wire: Wire, data: bytes, interval: float) -> bool:
    """Write `data` a byte at a time, `interval` seconds apart; False if the simulator
    stopped first."""
    for i in range(len(data)):
        wire.write(data[i : i + 1])
        if wire.wait(interval):
            return False
    return True


# -- pages -----------------------------------------------------------------------------

_big_body_cache: list[bytes] = []


def _big_body() -> bytes:
    if not _big_body_cache:
        line = b"<!-- padding padding padding padding padding padding padding padding -->\n"
        body = b"<html><body>\n" + line * (BIG_BODY_BYTES // len(line) + 1)
        _big_body_cache.append(body[:BIG_BODY_BYTES])
    return _big_body_cache[0]


def error_page(status: int) -> str:
    """Apache's page for an error status."""
    phrase = HTTPStatus(status).phrase
    return (
        '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n'
        f"<html><head>\n<title>{status} {phrase}</title>\n</head><body>\n"
        f"<h1>{phrase}</h1>\n</body></html>\n"
    )

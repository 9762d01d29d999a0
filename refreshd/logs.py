"""structlog set-up: one JSON object per line on stdout (or, for a person at a terminal, one
short console line: refreshd/console.py), redacted as a last line of defence."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

from refreshd.clock import system_clock
from refreshd.console import ConsoleRenderer
from refreshd.core.secrets import Secrets
from refreshd.core.vicidial import redact

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "Redactor", "configure", "get_logger", "redactor"]

# `auto`: console on a terminal, JSON elsewhere (journald, docker logs, a pipe to jq).
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


class Redactor:
    """A structlog processor masking known secrets and VICIdial's echoed password in every
    string of an event. The code never logs a secret on purpose; this catches mistakes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets = Secrets()

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Replace the known secrets (at start-up and on every config reload)."""
        prepared = Secrets(secrets)  # longest first, indexed: built once, not per line
        with self._lock:
            self._secrets = prepared

    @property
    def secrets(self) -> Secrets:
        return self._secrets

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        secrets = self._secrets
        for key, value in event_dict.items():
            event_dict[key] = self._clean(value, secrets)
        return event_dict

    def _clean(self, value: Any, secrets: Secrets) -> Any:
        if isinstance(value, str):
            return redact(value, secrets)
        if isinstance(value, list | tuple):
            return [self._clean(v, secrets) for v in value]
        if isinstance(value, dict):
            return {k: self._clean(v, secrets) for k, v in value.items()}
        return value


# One per process: the daemon and the CLI share it, and a reload updates its secrets.
redactor = Redactor()


def utc_text(moment: datetime, timespec: str = "auto") -> str:
    """An instant as refreshd writes it everywhere (log lines, messages, webhooks): ISO 8601
    in UTC, "Z" for the zone."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def _timestamp(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict["timestamp"] = utc_text(system_clock.now(), "milliseconds")
    return event_dict


def _iso_datetimes(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, datetime):
            event_dict[key] = utc_text(value)
    return event_dict


def _leading_keys(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """`timestamp`, `level`, `event` first: what a person scanning the journal reads."""
    ordered = {k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict}
    ordered.update(event_dict)
    return ordered


class _Sink:
    """The log's stream, never raising: a reader that went away (`refreshd refresh | head
    -1`, a journald restart) must not kill the thread that logs, nor the call it was
    recording. After the first failed write, lines are dropped and the file descriptor is
    pointed at /dev/null, so the interpreter's last flush at exit is quiet too."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.lost = False

    def write(self, text: str) -> int:
        with self._lock:
            if not self.lost:
                try:
                    self._stream.write(text)
                except (OSError, ValueError):  # EPIPE, EIO; ValueError: closed
                    self._lose()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if not self.lost:
                try:
                    self._stream.flush()
                except (OSError, ValueError):
                    self._lose()

    def _lose(self) -> None:
        self.lost = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)


def configure(
    stream: TextIO | None = None,
    level: str = "info",
    log_format: str = "json",
    environ: Mapping[str, str] | None = None,
) -> None:
    """Configure structlog once, in `main`: lines on `stream` (stdout by default) at `level`
    and above, in `log_format` (one of LOG_FORMATS). Console lines are coloured only on a
    terminal, and never when NO_COLOR is set (https://no-color.org)."""
    import structlog  # here, not above: the commands that only read never log

    out = stream or sys.stdout
    terminal = _is_terminal(out)
    renderer: Any = structlog.processors.JSONRenderer(sort_keys=False)
    if log_format == "console" or (log_format == "auto" and terminal):
        environ = os.environ if environ is None else environ
        renderer = ConsoleRenderer(colour=terminal and not environ.get("NO_COLOR"))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            _iso_datetimes,
            redactor,
            _leading_keys,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(_Sink(out)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):  # closed, or no file behind it
        return False


def get_logger(**context: Any) -> Any:
    """A bound logger; `Any` because structlog's bound loggers are dynamically typed."""
    import structlog

    return structlog.get_logger(**context)

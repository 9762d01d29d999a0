"""The systemd notify protocol: READY, RELOADING, STOPPING, WATCHDOG, STATUS to $NOTIFY_SOCKET.

The whole protocol (sd_notify(3)) is one AF_UNIX datagram of newline-separated
`KEY=VALUE` lines sent to the socket named in $NOTIFY_SOCKET: a file-system path, or a
Linux abstract-namespace name when it starts with `@`. It needs no library.

A `Notifier` reads its environment once, when built. Every method sends one datagram and
returns whether it was sent; none raises and none blocks (the socket is non-blocking, so a
full queue on systemd's side is a failed send, not a stalled scheduling loop). Outside
systemd (no $NOTIFY_SOCKET: a terminal, Docker, the tests) every method returns False and
does nothing, so callers never need to ask first. Nothing is logged here; a caller that
cares (READY=1 not delivered) logs the False it gets back.

Each send opens its own short-lived socket, as libsystemd's sd_notify() does: no shared
state, so the methods are safe to call from any thread.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from refreshd.clock import system_clock

__all__ = ["Notifier"]


class Notifier:
    """Talks to the service manager named by $NOTIFY_SOCKET, if any.

    `environ` defaults to os.environ. The watchdog is ours to feed only when
    $WATCHDOG_USEC is a positive number and $WATCHDOG_PID is unset or our own pid:
    systemd sets WATCHDOG_PID so that children which inherit the environment do not
    mistake themselves for the main process.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = _watchdog_usec(env) if self._address is not None else None

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given: we run under systemd with Type=notify."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec, as sd_watchdog_enabled(3)
        recommends), or None when no watchdog expects pings from this process."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        """Start-up or a reload is complete (READY=1), with an optional status line."""
        if status is None:
            return self._send("READY=1")
        return self._send("READY=1", _status_line(status))

    def reloading(self) -> bool:
        """A reload starts. MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match
        this message to the reload it asked for; older versions ignore the field."""
        # CLOCK_MONOTONIC, which is what systemd compares it with (and what monotonic() reads).
        now_usec = round(system_clock.monotonic() * 1_000_000)
        return self._send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> bool:
        """Shutdown has begun (STOPPING=1)."""
        return self._send("STOPPING=1")

    def watchdog(self) -> bool:
        """Feed the watchdog (WATCHDOG=1). Sends nothing when no watchdog is ours to feed."""
        if self._watchdog_usec is None:
            return False
        return self._send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """A one-line status for `systemctl status` (STATUS=...)."""
        return self._send(_status_line(text))

    def __repr__(self) -> str:
        return f"Notifier(enabled={self.enabled}, watchdog_interval={self.watchdog_interval})"

    def _send(self, *lines: str) -> bool:
        if self._address is None:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError:
            # No such socket, permission denied, systemd's queue full (EAGAIN), ...:
            # the protocol is advisory, and the caller decides whether a False matters.
            return False
        return True


def _socket_address(value: str) -> bytes | None:
    """$NOTIFY_SOCKET as an AF_UNIX address: an absolute path, or `@name` for the abstract
    namespace (a leading NUL byte). Anything else (unset, empty, vsock:...) is not ours."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        pid = env.get("WATCHDOG_PID", "").strip()
        if pid and int(pid) != os.getpid():
            return None
        usec = int(env.get("WATCHDOG_USEC", "").strip())
    except ValueError:
        return None
    return usec if usec > 0 else None


def _status_line(text: str) -> str:
    # One datagram is newline-separated assignments: a newline in the text would start a
    # new (bogus) assignment, so the status is flattened onto one line.
    return "STATUS=" + " ".join(text.splitlines())

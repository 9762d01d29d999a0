"""The daemon's notifications and pings: which event goes to which [[notify]] table, and
the healthchecks.io protocol on the core's slots. `events.py` tells it every change (the
one place a ledger change becomes a log line, a metric or, here, a delivery); it only
queues, on the `Sender`.

Pings (healthchecks.io; also Uptime Kuma push, Cronitor, a self-hosted healthchecks):
GET {ping_url}/start when a slot's first call starts, {ping_url} on the slot's first
success, {ping_url}/fail when the slot ends without one (`slot.missed`, which
`core/planning.missed_slot` decides). Which slot was pinged is bookkeeping of this
process, not state about the world: after a restart a slot may get a second /start.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from refreshd.clock import Clock
from refreshd.config import Config
from refreshd.config.notify import NotifyConfig
from refreshd.logs import redactor
from refreshd.metrics import Metrics
from refreshd.notify.formats import body
from refreshd.notify.sender import Delivery, Sender

__all__ = ["Notifications", "ping_url"]


@dataclass(frozen=True)
class _Sink:
    name: str
    url: str
    format: str
    events: frozenset[str]


def ping_url(base: str, suffix: str) -> str:
    """`base` with "/start" or "/fail" added to its path (a query string stays last)."""
    if not suffix:
        return base
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + suffix))


class Notifications:
    """Every notification and ping of one daemon. Thread-safe: the scheduler's workers
    tell it their events; `configure` runs at start and on each reload."""

    def __init__(
        self, clock: Clock, log: Any, metrics: Metrics | None = None, **sender: Any
    ) -> None:
        self._clock = clock
        self._log = log
        self._metrics = metrics
        self._sender_options = sender  # for tests: capacity, timeout, attempts, send...
        self._lock = threading.Lock()
        self._tables: tuple[NotifyConfig, ...] | None = None
        self._sinks: tuple[_Sink, ...] = ()
        self._pings: dict[str, str] = {}
        self._sender: Sender | None = None
        self._started: dict[str, datetime] = {}  # server -> the slot it sent /start for
        self._succeeded: dict[str, datetime] = {}  # server -> the slot it sent success for

    def configure(self, config: Config) -> None:
        """Take a (new) config. The sender is rebuilt when [[notify]] changed; the old one
        delivers what it holds on a thread of its own, so a reload never waits on it."""
        sinks = tuple(
            _Sink(t.name, t.secret, t.format, frozenset(t.events))
            for t in config.notify
            if t.secret is not None
        )
        pings = {s.name: s.ping_secret for s in config.servers if s.ping_secret is not None}
        old = None
        with self._lock:
            self._sinks, self._pings = sinks, pings
            wanted = bool(sinks or pings)
            if config.notify != self._tables or wanted != (self._sender is not None):
                old = self._sender
                self._sender = self._new_sender() if wanted else None
                self._tables = config.notify
        if old is not None:
            threading.Thread(target=old.stop, name="notify-drain", daemon=True).start()

    def _new_sender(self) -> Sender:
        return Sender(self._clock, self._log, self._metrics, **self._sender_options).start()

    def stop(self) -> bool:
        """Deliver what is queued, within the sender's bound; True when all went out."""
        with self._lock:
            sender, self._sender = self._sender, None
        return True if sender is None else sender.stop()

    # --- what events.py tells ------------------------------------------------------------

    def event(self, event: str, level: str, fields: Mapping[str, object]) -> None:
        """One event occurrence (a change, never a retry of a delivery): a POST to each
        table that asks for it, and the ping it means, if any."""
        with self._lock:
            sender, sinks = self._sender, self._sinks
        if sender is None:
            return
        now = self._clock.now()
        secrets = redactor.secrets
        for sink in sinks:
            if event in sink.events:
                payload = body(sink.format, event, level, fields, now, secrets)
                sender.submit(Delivery("notification", sink.name, event, sink.url, payload))
        server, slot = fields.get("server"), fields.get("slot")
        if not isinstance(server, str) or not isinstance(slot, datetime):
            return
        # A settled run (a lost call's refresh found taken) is the slot's success too.
        done = event in ("refresh.succeeded", "refresh.settled")
        if done and fields.get("trigger") == "schedule":
            self._ping(server, slot, "success", self._succeeded)
        elif event == "slot.missed":
            self._ping(server, slot, "fail", None)

    def starting(self, server: str, slot: datetime) -> None:
        """A scheduled call of `server` in the slot starting at `slot` is sent now."""
        self._ping(server, slot, "start", self._started)

    def _ping(
        self, server: str, slot: datetime, what: str, once: dict[str, datetime] | None
    ) -> None:
        with self._lock:
            sender, base = self._sender, self._pings.get(server)
            if sender is None or base is None:
                return
            if once is not None:
                if once.get(server) == slot:
                    return  # one /start and one success per slot
                once[server] = slot
        url = ping_url(base, "" if what == "success" else what)
        sender.submit(Delivery("ping", server, what, url))

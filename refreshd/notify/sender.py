"""The one thread that delivers notifications and pings, off the scheduling path.

`submit` only appends to a bounded queue (full: the delivery is dropped and counted), so a
webhook that hangs or refuses never delays a refresh. The worker sends each delivery with
a time-out and a few retries with back-off, through an HTTP session of its own (never the
VICIdial client's: its proxy, trust and deadline are VICIdial's). A delivery that still
fails is logged once, as `notify.failed`, with the URL shown as scheme and host only: the
rest of it (a Slack token, a check's key) is a secret.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from refreshd.client import transport_failure
from refreshd.clock import Clock
from refreshd.deadline import DeadlineHTTPPool, DeadlineHTTPSPool, Reaper
from refreshd.metrics import Metrics

__all__ = ["Delivery", "Failed", "Sender", "shown_url"]

CAPACITY = 1000  # deliveries waiting; a fleet-wide outage suspends many servers at once
TIMEOUT = 5.0  # seconds, per POST or GET
ATTEMPTS = 3  # in all, the first included
BACKOFF = 1.0  # seconds before the second attempt, doubled before each later one
DRAIN = 5.0  # seconds at most that stop() waits for the queue to empty
# Answers a retry may change; any other 4xx is the URL's or the body's fault.
_PASSING = frozenset({408, 429})


@dataclass(frozen=True)
class Delivery:
    """One POST (a notification: `body` holds its JSON) or GET (a ping: `body` is None)."""

    kind: str  # "notification" or "ping"
    name: str  # the [[notify]] table's name, or the pinging server's
    event: str  # the event told, or the ping: "start", "success", "fail"
    url: str = field(repr=False)  # a secret: never logged, never in an error
    body: bytes | None = field(default=None, repr=False)


class Failed(Exception):
    """A delivery attempt failed; `kind` says how (a transport kind or `http_NNN`), never
    with the exception's text, which may hold the URL."""

    def __init__(self, kind: str, *, passing: bool = True) -> None:
        super().__init__(kind)
        self.kind = kind
        self.passing = passing  # whether a retry may go through


def shown_url(url: str) -> str:
    """The URL as a log may show it: scheme and host (and port), nothing after."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "?"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}"


# Sends one delivery within the time-out, or raises Failed.
Send = Callable[[Delivery, float], None]


class Sender:
    """A bounded queue and the one worker thread that empties it. Thread-safe."""

    def __init__(
        self,
        clock: Clock,
        log: Any,
        metrics: Metrics | None = None,
        *,
        capacity: int = CAPACITY,
        timeout: float = TIMEOUT,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        send: Send | None = None,
    ) -> None:
        self._clock = clock
        self._log = log
        self._metrics = metrics
        self._capacity = capacity
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._session = requests.Session()
        # No HTTP(S)_PROXY, no .netrc: what the config says is all that is used.
        self._session.trust_env = False
        # The time-out bounds the whole exchange, as a VICIdial call's does (deadline.py):
        # requests' own bounds each read, which a webhook trickling its answer never trips.
        adapter = HTTPAdapter(max_retries=0)
        adapter.poolmanager.pool_classes_by_scheme = {
            "http": DeadlineHTTPPool,
            "https": DeadlineHTTPSPool,
        }
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._reaper = Reaper(clock.monotonic)
        self._send = send or self._http
        self._cond = threading.Condition()
        self._queue: deque[Delivery] = deque()
        self._closing = False
        self._dropping = False  # a drop was logged; the next one logged is after a success
        self._hurry = threading.Event()  # set past stop's bound: back-offs end, no retries
        self.dropped = 0
        self._thread = threading.Thread(target=self._work, name="notify", daemon=True)

    def start(self) -> Sender:
        self._thread.start()
        return self

    def submit(self, delivery: Delivery) -> bool:
        """Queue `delivery` without ever blocking; False when it was dropped (the queue is
        full, or the sender stopping)."""
        with self._cond:
            if self._closing or len(self._queue) >= self._capacity:
                self._drop([delivery], "the queue is full" if not self._closing else "stopping")
                return False
            self._queue.append(delivery)
            self._dropping = False
            self._cond.notify()
            return True

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def stop(self, grace: float = DRAIN) -> bool:
        """Deliver what is queued (retries included) for at most `grace` seconds; what is
        left then is dropped and counted. True when the queue emptied."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(grace)
        self._hurry.set()  # past the bound: a back-off in progress ends, no more retries
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            if left:
                self._drop(left, "not delivered before the stop's bound")
        drained = not self._thread.is_alive()
        if drained:
            self._session.close()
        self._reaper.close()
        return drained

    # --- the worker --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                delivery = self._queue.popleft()
            self._deliver(delivery)

    def _deliver(self, delivery: Delivery) -> None:
        error: Failed | None = None
        for attempt in range(self._attempts):
            if attempt:
                delay = self._backoff * 2 ** (attempt - 1)
                if self._clock.wait(self._hurry, delay):
                    break  # stopping: no retry
            try:
                self._send(delivery, self._timeout)
            except Failed as failed:
                error = failed
                if not failed.passing:
                    break
                continue
            except Exception:  # a bug must not kill the one thread; its text may hold the URL
                error = Failed("internal_error", passing=False)
                break
            self._count("sent", delivery)
            return
        self._count("failed", delivery)
        self._log.warning(
            "notify.failed",
            kind=delivery.kind,
            name=delivery.name,
            notify_event=delivery.event,
            error=error.kind if error is not None else "stopped",
            attempts=attempt + 1,
            url=shown_url(delivery.url),
        )

    def _http(self, delivery: Delivery, timeout: float) -> None:
        """The real exchange: POST the body or GET, over within `timeout` (the reaper cuts
        a server trickling its headers), the answer's status kept."""
        method = "GET" if delivery.body is None else "POST"
        headers = {"User-Agent": "refreshd"}
        if delivery.body is not None:
            headers["Content-Type"] = "application/json"
        with self._reaper.watching(self._clock.monotonic() + timeout) as watch:
            try:
                with self._session.request(
                    method,
                    delivery.url,
                    data=delivery.body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                ) as response:
                    # The status is the answer; its body is not read: once the headers are
                    # in, the reaper no longer sees the socket (http.client hands it to the
                    # response), and a body trickled a byte at a time would hold the thread.
                    status = response.status_code
            except requests.RequestException as exc:
                kind = str(transport_failure(exc))
                raise Failed("timeout" if watch.expired else kind) from None
            except (OSError, ValueError):
                raise Failed("timeout" if watch.expired else "connection_failed") from None
        if watch.expired:
            raise Failed("timeout")  # cut at the deadline: what came is not an answer
        if not 200 <= status < 300:
            raise Failed(f"http_{status}", passing=status >= 500 or status in _PASSING)

    # --- counting ----------------------------------------------------------------------

    def _count(self, what: str, delivery: Delivery) -> None:
        if self._metrics is not None:
            counter = self._metrics.notify_sent if what == "sent" else self._metrics.notify_failed
            counter.labels(delivery.kind).inc()

    def _drop(self, deliveries: list[Delivery], why: str) -> None:
        """Under the lock: count dropped deliveries; log the first of a run of drops."""
        self.dropped += len(deliveries)
        if self._metrics is not None:
            for delivery in deliveries:
                self._metrics.notify_dropped.labels(delivery.kind).inc()
        if not self._dropping:
            self._dropping = True
            first = deliveries[0]
            self._log.warning(
                "notify.dropped",
                why=why,
                count=len(deliveries),
                kind=first.kind,
                name=first.name,
                notify_event=first.event,
            )

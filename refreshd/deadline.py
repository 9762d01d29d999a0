"""One total deadline per HTTP call: a reaper that shuts a call's socket when its time is up.

urllib3's time-outs bound each socket operation, not the exchange: a server that sends its
headers a byte a second, or `100 Continue` forever, never trips them, and the call (with the
login it holds, for an unproven login every server sharing it) would hang forever. Each
call registers here with its deadline; the connection pool tells the call which connection
it got; at the deadline one reaper thread shuts that connection's socket down, the blocked
read fails at once, and the client reports a time-out.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["DeadlineHTTPPool", "DeadlineHTTPSPool", "Reaper", "Watch"]


class Watch:
    """One call under a deadline: the connection it uses, and whether time ran out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None
        self.expired = False

    def uses(self, conn: Any) -> None:
        with self._lock:
            self._conn = conn
            expired = self.expired
        if expired:
            _shut(conn)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            conn = self._conn
        if conn is not None:
            _shut(conn)


def _shut(conn: Any) -> None:
    """Make every blocked and later read of the connection end now. A shutdown, not a
    close: closing would pull the file from under the reading thread mid-read; the call's
    own thread closes it (the pool drops a connection whose exchange failed)."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


_current = threading.local()
"""The Watch of the call this thread is making, if any."""


class _Watched:
    """Mixed into urllib3's pools: a connection handed out goes to the thread's Watch."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        watch: Watch | None = getattr(_current, "watch", None)
        if watch is not None:
            watch.uses(conn)
        return conn


class DeadlineHTTPPool(_Watched, HTTPConnectionPool):
    pass


class DeadlineHTTPSPool(_Watched, HTTPSConnectionPool):
    pass


class Reaper:
    """One thread that expires watches at their deadlines (monotonic seconds)."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closing = False  # the thread ends once no watch is left

    @contextlib.contextmanager
    def watching(self, deadline: float) -> Iterator[Watch]:
        """Watch the calls this thread makes inside the block."""
        watch = Watch()
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), watch))
            if self._thread is None:
                self._closing = False
                self._thread = threading.Thread(target=self._run, name="deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        _current.watch = watch
        try:
            yield watch
        finally:
            _current.watch = None
            with self._cond:
                # Done in time: drop it now rather than at its deadline (the heap stays small).
                self._heap = [entry for entry in self._heap if entry[2] is not watch]
                heapq.heapify(self._heap)

    def close(self) -> None:
        """End the thread once the watches left are over (a later watch starts a new one)."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    if self._closing:
                        self._thread = None
                        return
                    self._cond.wait()
                deadline, _, watch = self._heap[0]
                left = deadline - self._monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
            watch.expire()

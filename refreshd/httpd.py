"""The /metrics, /healthz and status page (`/`) endpoint: a small HTTP server no client can
exhaust. The page itself is refreshd/statuspage.py's."""

from __future__ import annotations

import asyncio
import errno
import gzip
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from refreshd.clock import Clock, system_clock
from refreshd.logs import get_logger

__all__ = [
    "EXCHANGE_TIMEOUT",
    "LISTEN_BACKLOG",
    "MAX_CONNECTIONS",
    "EndpointAnswer",
    "MetricsServer",
    "answer_request",
    "listen_error",
]

# A request's head must arrive, and its answer leave, within this many seconds, however the
# client trickles (slowloris) or stops reading. Prometheus's default scrape time-out is 10 s.
EXCHANGE_TIMEOUT = 10.0
# Connections open at once. Scrapers and health checks need a handful. At the bound the
# connection that has waited longest without sending its request is closed to make room
# (a flood of idle sockets then cannot lock /healthz out); when every open connection is
# being answered, the newcomer is closed instead.
MAX_CONNECTIONS = 64
# Connections the kernel queues before we accept them (Python's socketserver asks for 5).
LISTEN_BACKLOG = 128
# A request line and headers larger than this are not a scrape.
MAX_HEAD = 8 * 1024
# Threads that build answers (the registry, `healthy()`); the event loop only moves bytes.
ANSWER_THREADS = 2
# What the event loop reports (out of file descriptors at accept, say): one line a minute.
ERROR_LOG_INTERVAL = 60.0

_PATHS = "/ (the status page), /metrics and /healthz"
# The status page: an answer built on the answer threads, like a scrape.
Page = Callable[[], "EndpointAnswer"]


@dataclass(frozen=True)
class EndpointAnswer:
    """What one request gets: a status, a body and its headers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, *, head_only: bool = False) -> bytes:
        """The whole HTTP/1.1 answer; the connection is closed after it."""
        lines = [
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def _text(status: int, text: str) -> EndpointAnswer:
    return EndpointAnswer(status, text.encode())


def answer_request(
    method: str,
    target: str,
    headers: dict[str, str],
    registry: CollectorRegistry,
    healthy: Callable[[], bool],
    page: Page | None = None,
) -> EndpointAnswer:
    """The answer to one parsed request (header names in lower case)."""
    path = target.split("?", 1)[0]
    if path not in ("/metrics", "/healthz") and not (path == "/" and page):
        return _text(404, f"not found: {_PATHS} are served here\n")
    if method not in ("GET", "HEAD"):
        return EndpointAnswer(405, b"GET or HEAD only\n", headers=(("Allow", "GET, HEAD"),))
    if path == "/" and page:
        return page()
    if path == "/healthz":
        if healthy():
            return _text(200, "ok\n")
        return _text(503, "scheduling loop stalled\n")
    encoder, content_type = choose_encoder(headers.get("accept", ""))
    body = encoder(registry)
    if gzip_accepted(headers.get("accept-encoding", "")):
        return EndpointAnswer(
            200, gzip.compress(body), content_type, (("Content-Encoding", "gzip"),)
        )
    return EndpointAnswer(200, body, content_type)


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """(method, target, headers) from a request line and headers; None if malformed."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            return None
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening on `host` (a name, IPv4 or IPv6 address) and `port`."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listen_error(listen: str, err: OSError) -> str:
    """What `daemon.failed` says when `metrics_listen` cannot be listened on, and the fix."""
    if err.errno == errno.EADDRINUSE:
        fix = "choose a free port"
    else:  # not an address of this machine, a name that does not resolve, no IPv6 ...
        fix = 'use an address of this machine, e.g. "127.0.0.1:9464" or "[::1]:9464"'
    return (
        f"daemon.metrics_listen {listen}: {err.strerror or err}; {fix}, "
        'or set metrics_listen = "" to turn metrics off'
    )


class MetricsServer:
    """`/metrics` (Prometheus text), `/healthz` (200 while `healthy()`, else 503) and, given
    `page`, the status page at `/`, on one event-loop thread: an idle connection costs a
    file descriptor, not a thread.

    Raises OSError at construction when the address cannot be listened on."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        *,
        clock: Clock = system_clock,
        exchange_timeout: float = EXCHANGE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        page: Page | None = None,
    ) -> None:
        self._page = page
        self._exchange_timeout = exchange_timeout
        self._max_connections = max_connections
        self._registry = registry
        self._healthy = healthy
        self._clock = clock
        self._log = get_logger()
        self._sock = _listening_socket(host, port)
        self._host = host
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._stopping = asyncio.Event()
        self._pool = ThreadPoolExecutor(ANSWER_THREADS, thread_name_prefix="metrics-answer")
        # Open connections in the order they came; True while still sending the request.
        self._open: dict[asyncio.StreamWriter, bool] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # The status page being built, shared by every request for it meanwhile.
        self._page_building: asyncio.Future[EndpointAnswer] | None = None
        self._last_error: float | None = None
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        """Where /metrics is served, IPv6 hosts in brackets."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(self._exchange_timeout)
        else:
            self._loop.close()
        self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the event loop's thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(
            self._connection, sock=self._sock, limit=MAX_HEAD, backlog=LISTEN_BACKLOG
        )
        await self._stopping.wait()
        server.close()
        for writer in list(self._open):
            writer.transport.abort()
        pending: list[asyncio.Future[Any]] = [*self._tasks]
        if self._page_building is not None:
            pending.append(self._page_building)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._open[writer] = True
        if len(self._open) > self._max_connections:
            self._make_room(writer)
        try:
            async with asyncio.timeout(self._exchange_timeout):
                await self._exchange(reader, writer)
            writer.close()
        except (OSError, asyncio.IncompleteReadError):  # TimeoutError is an OSError
            # Gone, too slow or pushed out: nothing to say to it, nothing to log.
            writer.transport.abort()
        finally:
            self._open.pop(writer, None)
            self._tasks.discard(task)

    def _make_room(self, newcomer: asyncio.StreamWriter) -> None:
        """Close the oldest connection still sending its request, else the newcomer."""
        waiting = [w for w, sending in self._open.items() if sending and w is not newcomer]
        evicted = waiting[0] if waiting else newcomer
        self._open.pop(evicted, None)
        evicted.transport.abort()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            answer, method = _text(431, f"request head over {MAX_HEAD} bytes\n"), "GET"
        else:
            if writer not in self._open:
                return  # pushed out while its last bytes arrived
            self._open[writer] = False  # being answered: no longer one to push out
            request = parse_head(head)
            if request is None:
                answer, method = _text(400, "malformed request\n"), "GET"
            else:
                method = request[0]
                answer = await self._answer(*request)
        writer.write(answer.encode(head_only=method == "HEAD"))
        await writer.drain()

    async def _answer(self, method: str, target: str, headers: dict[str, str]) -> EndpointAnswer:
        """The answer, built on an answer thread. The status page is built once for every
        request that comes while it is being built: it costs about a second for 10,000
        servers, and requests for it must never hold every answer thread, which /healthz
        and /metrics need."""
        if self._page is None or method not in ("GET", "HEAD") or target.split("?")[0] != "/":
            return await self._built(method, target, headers)
        building = self._page_building
        if building is None:
            building = asyncio.ensure_future(self._built("GET", "/", headers))
            self._page_building = building
            building.add_done_callback(self._page_built)
        # Shielded: a reader that leaves (or times out) does not cancel the others' page.
        return await asyncio.shield(building)

    def _page_built(self, building: asyncio.Future[EndpointAnswer]) -> None:
        if self._page_building is building:
            self._page_building = None

    async def _built(self, method: str, target: str, headers: dict[str, str]) -> EndpointAnswer:
        loop = asyncio.get_running_loop()
        try:
            answering = loop.run_in_executor(
                self._pool,
                answer_request,
                method,
                target,
                headers,
                self._registry,
                self._healthy,
                self._page,
            )
        except RuntimeError:
            # No thread could be started for the answer (the process is out of threads).
            return _text(503, "busy: try again\n")
        try:
            return await answering
        except Exception as err:
            # The path only: a query string is the client's, and never logged.
            path = target.split("?", 1)[0][:100]
            self._log.error("metrics.error", error=f"answering {path}: {err!r}")
            return _text(500, "internal error; see the daemon's log\n")

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Instead of asyncio's traceback on stderr: one JSON line, at most once a minute."""
        now = self._clock.monotonic()
        if self._last_error is not None and now - self._last_error < ERROR_LOG_INTERVAL:
            return
        self._last_error = now
        error = context.get("exception")
        detail = getattr(error, "strerror", None) or (repr(error) if error else "")
        self._log.error(
            "metrics.error",
            error=f"{context.get('message', 'event loop error')}: {detail}".rstrip(": "),
            repeats_suppressed_for_s=ERROR_LOG_INTERVAL,
        )

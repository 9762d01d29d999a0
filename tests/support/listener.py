"""A webhook and ping receiver on loopback: a real HTTP server (port 0) that records every
request it gets, answering with a status the test chooses."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Listener:
    """Records requests in `received`; answers `status` after `delay` seconds (both
    settable while it runs). With `trickle` (seconds), the answer comes one byte per
    `trickle`, never idle long enough for a per-read time-out to trip: a header of
    TRICKLED bytes when `trickled` is "head", the body when it is "body"."""

    TRICKLED = 1000

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.trickle = 0.0
        self.trickled = "head"
        self._answering = threading.Event()  # set at stop: a delayed answer goes at once
        self._lock = threading.Lock()
        self._received: list[Received] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with listener._lock:
                    listener._received.append(
                        Received(self.command, self.path, dict(self.headers), body)
                    )
                listener._answering.wait(listener.delay)
                if listener.trickle:
                    self._trickle(listener.trickle, listener.trickled)
                    return
                self.send_response(listener.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def _trickle(self, every: float, part: str) -> None:
                head = part == "head"
                self.wfile.write(f"HTTP/1.0 {listener.status} OK\r\n".encode())
                self.wfile.write(
                    b"X-Slow: " if head else b"Content-Length: %d\r\n\r\n" % (Listener.TRICKLED)
                )
                for _ in range(Listener.TRICKLED):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    if listener._answering.wait(every):
                        return
                if head:
                    self.wfile.write(b"\r\nContent-Length: 0\r\n\r\n")

            do_GET = _record
            do_POST = _record

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def paths(self, prefix: str = "") -> list[str]:
        return [r.path for r in self.received if r.path.startswith(prefix)]

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._answering.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def listening() -> Iterator[Listener]:
    """A started Listener, stopped at the end of the block."""
    listener = Listener().start()
    try:
        yield listener
    finally:
        listener.stop()

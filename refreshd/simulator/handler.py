"""One simulator connection: reads a request, routes it to the API (through any fault) or
to the /_sim/ admin endpoints, and writes the answer."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import ssl
import struct
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlsplit

from refreshd.simulator import faults
from refreshd.simulator.faults import HTML, LOGIN_PAGE_PATH, Fault, Headers, error_page

if TYPE_CHECKING:
    from refreshd.simulator.http import Simulator

API_SUFFIX = "non_agent_api.php"
_HANDSHAKE_TIMEOUT = 10.0
MAX_REQUEST_BODY = 1_000_000

_JSON = "application/json"
_LOGIN_FORM = (
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>\n"
    '<form method="post" action="/login.php">\n'
    '<label>Username <input name="username"></label>\n'
    '<label>Password <input type="password" name="password"></label>\n'
    '<button type="submit">Sign in</button>\n</form></body></html>\n'
)


class Server(ThreadingHTTPServer):
    """A thread per connection, quiet about clients that hang up."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], sim: Simulator, tls: ssl.SSLContext | None = None
    ) -> None:
        self.sim = sim
        self.tls = tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The handshake in the connection's own thread, bounded: a client that connects
        # and says nothing must not hold it forever.
        request.settimeout(_HANDSHAKE_TIMEOUT)
        try:
            tls = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            self.sim._count_tls_refused()  # e.g. the client refused our certificate
            return
        with tls:
            tls.settimeout(None)
            super().finish_request(tls, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would ask DNS for getfqdn(host): slow, and never needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Quiet by default: a client hanging up mid-answer is normal here.
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            # A bug in the simulator itself: count it and show the traceback.
            self.sim._count_error()
            super().handle_error(request, client_address)


class Server6(Server):
    """The same on IPv6."""

    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """One connection; also the `faults.Wire` the fault modes write through."""

    protocol_version = "HTTP/1.1"  # keep-alive: one thread serves a client's whole session
    server_version = "Apache"
    sys_version = ""
    # Headers and body go out in one write, and small answers must not wait for an ACK.
    disable_nagle_algorithm = True
    _received = 0.0  # the clock when the current request line arrived

    @property
    def sim(self) -> Simulator:
        return cast(Server, self.server).sim

    def setup(self) -> None:
        super().setup()
        self.sim._track(self.connection, add=True)

    def finish(self) -> None:
        self.sim._track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: benchmarks send thousands of requests a second."""

    def parse_request(self) -> bool:
        # Called as soon as the request line has been read: the call has arrived.
        self._received = self.sim._now()
        return super().parse_request()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    # -- dispatch ---------------------------------------------------------------

    def _handle(self) -> None:
        split = urlsplit(self.path)
        path = split.path or "/"
        body = self._read_body()
        if body is None:
            return
        if path.startswith("/_sim/"):
            _admin(self, path, body)
            return
        is_api = path.endswith(API_SUFFIX)
        fault = self.sim._begin(path, api=is_api)
        try:
            if is_api:
                self._api(path, self._fields(split.query, body), fault)
            elif path == LOGIN_PAGE_PATH:
                self.send(200, _LOGIN_FORM.encode())
            else:
                self.send(404, error_page(404).encode())
        finally:
            self.sim._end()

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self.send(411, error_page(411).encode())
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST_BODY:
            self.close_connection = True
            self.send(413, error_page(413).encode())
            return None
        return self.rfile.read(length) if length else b""

    def _fields(self, query: str, body: bytes) -> dict[str, str]:
        # PHP: each variable from $_GET if present there, else from $_POST.
        fields: dict[str, str] = {}
        ctype = self.headers.get("Content-Type", "application/x-www-form-urlencoded")
        if body and ctype.startswith("application/x-www-form-urlencoded"):
            fields.update(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        fields.update(parse_qsl(query, keep_blank_values=True))
        return fields

    def _api(self, path: str, fields: dict[str, str], fault: Fault | None) -> None:
        if fault is not None and fault.latency > 0 and self.wait(fault.latency):
            self.abort()
            return
        if fault is not None and not fault.runs_php:
            self.sim._record(path, fields, f"fault_{fault.mode}", self._received)
            faults.answer_without_php(fault, self)
            return
        answer = self.sim._php(path, fields, self.client_address[0], self._received)
        faults.deliver(fault, answer, self)

    # -- the wire -------------------------------------------------------------------

    def head(self, status: int, length: int, extra: Headers = (), *, ctype: str = HTML) -> bytes:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Date: {self.date_time_string()}",
            "Server: Apache",
            f"Content-Type: {ctype}",
            f"Content-Length: {length}",
        ]
        lines.extend(f"{k}: {v}" for k, v in extra)
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(self, status: int, body: bytes, *, ctype: str = HTML, extra: Headers = ()) -> None:
        head = self.head(status, len(body), extra, ctype=ctype)
        if len(body) <= 65536:
            self.wfile.write(head + body)
        else:
            self.wfile.write(head)
            view = memoryview(body)
            for start in range(0, len(body), 262144):
                self.wfile.write(view[start : start + 262144])

    def write(self, data: bytes) -> None:
        self.wfile.write(data)

    def wait(self, seconds: float) -> bool:
        return self.sim._stopping.wait(seconds)

    @property
    def accept_encoding(self) -> str:
        return str(self.headers.get("Accept-Encoding", ""))

    def abort(self) -> None:
        """Close with SO_LINGER 0, so the peer gets a TCP reset."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def send_json(self, status: int, document: Any) -> None:
        self.send(status, json.dumps(document).encode(), ctype=_JSON)


def _admin(handler: _Handler, path: str, body: bytes) -> None:
    """The /_sim/ endpoints: observe and control the simulator over HTTP."""
    sim, method = handler.sim, handler.command
    route = (method, path.rstrip("/"))
    if route == ("GET", "/_sim/stats"):
        handler.send_json(200, sim.stats())
    elif route == ("GET", "/_sim/calls"):
        handler.send_json(200, sim.calls())
    elif route == ("GET", "/_sim/faults"):
        handler.send_json(200, sim.stats()["faults"])
    elif route == ("POST", "/_sim/faults"):
        try:
            sim.set_fault(**_fault_spec(body))
        except (ValueError, TypeError) as exc:
            handler.send_json(400, {"error": str(exc)})
            return
        handler.send_json(200, sim.stats()["faults"])
    elif route == ("DELETE", "/_sim/faults"):
        sim.clear_faults()
        handler.send_json(200, [])
    elif route == ("POST", "/_sim/reset"):
        sim.reset()
        handler.send_json(200, {"reset": True})
    elif route == ("POST", "/_sim/keepalive"):
        sim.keepalive()
        handler.send_json(200, {"keepalive": True})
    else:
        handler.send_json(404, {"error": f"no admin endpoint {method} {path}"})


_FAULT_KEYS = ("mode", "path", "count", "latency", "interval", "delay")


def _fault_spec(body: bytes) -> dict[str, Any]:
    """The arguments of set_fault from a POST /_sim/faults body; ValueError if malformed."""
    spec = json.loads(body or b"{}")
    if not isinstance(spec, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(spec) - set(_FAULT_KEYS)
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    return {"mode": str(spec.get("mode", "none")), **{k: v for k, v in spec.items() if k != "mode"}}

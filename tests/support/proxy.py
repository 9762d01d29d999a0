"""A tiny HTTP proxy on loopback: CONNECT tunnels (https:// targets) and absolute-form
requests (http:// targets), to loopback only; it records what went through it."""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

_TIMEOUT = 10.0  # seconds any socket of the proxy waits: nothing here can hang a test
_MAX_HEAD = 65536


class LoopbackProxy:
    """`url` is what `[client] proxy` names. `seen`: one "CONNECT host:port" or
    "POST http://..." line per connection (what follows on it is relayed unseen);
    `authorized`: how many carried Proxy-Authorization (its value is never kept).
    `refuse`: answer every request with this status instead (a 407 for bad credentials, a
    501 from a proxy that does not tunnel), as a real proxy does, and close."""

    def __init__(self, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.seen: list[str] = []
        self.authorized = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self._thread.daemon = True
        self._thread.start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(_TIMEOUT)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        with self._lock:
            self.seen.append(f"{method} {target}")
            if any(line.lower().startswith("proxy-authorization:") for line in lines[1:]):
                self.authorized += 1
        if self.refuse is not None:
            client.sendall(
                f"HTTP/1.1 {self.refuse} Refused by the test proxy\r\n"
                'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                "Connection: close\r\n\r\n".encode()
            )
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = self._connect(host, int(port))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            parts = urlsplit(target)
            upstream = self._connect(parts.hostname or "", parts.port or 80)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            kept = [line for line in lines[1:] if not line.lower().startswith("proxy-")]
            request = "\r\n".join([f"{method} {path} {version}", *kept]) + "\r\n\r\n"
            upstream.sendall(request.encode("latin-1"))
        with upstream:
            if rest:
                upstream.sendall(rest)
            _relay(client, upstream)

    @staticmethod
    def _connect(host: str, port: int) -> socket.socket:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the test proxy goes to loopback only")
        upstream = socket.create_connection((host, port), timeout=_TIMEOUT)
        upstream.settimeout(_TIMEOUT)
        return upstream

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _relay(one: socket.socket, other: socket.socket) -> None:
    """Copy bytes both ways until either side closes or goes quiet for _TIMEOUT."""
    peers = {one: other, other: one}
    while True:
        ready, _, _ = select.select(list(peers), [], [], _TIMEOUT)
        if not ready:
            return
        for sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            peers[sock].sendall(data)


@contextlib.contextmanager
def running_proxy(refuse: int | None = None) -> Iterator[LoopbackProxy]:
    proxy = LoopbackProxy(refuse)
    try:
        yield proxy
    finally:
        proxy.close()


class TcpProxy:
    """A TCP relay on loopback to `port` (a database) that a test can cut and restore, as
    a network outage would: `cut()` closes every relayed connection and refuses new ones;
    `restore()` lets them through again. `stall()`: the connections stay open but nothing
    is relayed any more (a hung peer or middlebox: TCP still acknowledges, no answer ever
    comes), until `restore()`. The database service itself is never touched."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._cut = False
        self._stalled = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def stall(self) -> None:
        self._stalled.set()

    def restore(self) -> None:
        with self._lock:
            self._cut = False
        self._stalled.clear()

    def close(self) -> None:
        self._stopping.set()
        self.cut()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                refused = self._cut
            if refused:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=_TIMEOUT)
            except OSError:
                client.close()
                continue
            with self._lock:
                # Cut while this one was being connected: it must not outlive the cut.
                refused = self._cut
                if not refused:
                    self._open += [client, upstream]
            if refused:
                client.close()
                upstream.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        client.settimeout(None)
        upstream.settimeout(None)
        peers = {client: upstream, upstream: client}
        try:
            while True:
                if self._stalled.wait(0) and not self._stopping.wait(0.05):
                    continue  # nothing read, nothing relayed: the peer hangs
                ready, _, _ = select.select(list(peers), [], [], _TIMEOUT)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # cut under us: the sockets are closed
            return
        finally:
            client.close()
            upstream.close()


@contextlib.contextmanager
def tcp_proxy(port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(port)
    try:
        yield proxy
    finally:
        proxy.close()

"""A TCP relay on loopback between refreshd and a database server, that a test can cut (every
connection closed, new ones refused) and mend, to stage a store outage without touching the
machine's database service."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading

_TIMEOUT = 10.0  # seconds a relayed socket waits: nothing here can hang a test


class TcpCut:
    """Relays 127.0.0.1:`port` to 127.0.0.1:`target`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.cut_now = False
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                relay._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self._thread.daemon = True
        self._thread.start()

    def cut(self) -> None:
        """Close every relayed connection; refuse new ones until `mend`."""
        with self._lock:
            self.cut_now = True
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def mend(self) -> None:
        with self._lock:
            self.cut_now = False

    def close(self) -> None:
        self.cut()
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            if self.cut_now:
                client.close()
                return
            server = socket.create_connection(("127.0.0.1", self.target), timeout=_TIMEOUT)
            self._open += [client, server]
        client.settimeout(_TIMEOUT)
        other = threading.Thread(target=_pump, args=(server, client), daemon=True)
        other.start()
        _pump(client, server)
        other.join(_TIMEOUT)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        return
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

"""The VICIdial simulator as tests use it: started on a free loopback port, one path per
server so that its counts tell servers apart, and what it saw; and a scripted stand-in
for VICIdial that answers each path with a body of the test's choosing."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from refreshd.simulator import API_PATH, SimServer, Simulator, SimUser, load_simulator_config
from tests.support.repo import SIMULATOR_CONFIG


def refresh_directly(sim: Simulator, user: str, password: str, *, source: str = "test") -> None:
    """A server_refresh sent to the simulator by someone other than refreshd (an
    administrator, another tool); it must succeed."""
    fields = {"function": "server_refresh", "user": user, "pass": password, "source": source}
    answer = requests.post(sim.url + API_PATH, data={**fields, "stage": "REFRESH"}, timeout=10)
    assert answer.text.startswith("SUCCESS"), answer.text


@contextmanager
def running_simulator(
    users: Sequence[SimUser] | None = None,
    servers: Sequence[SimServer] | None = None,
    **options: Any,
) -> Iterator[Simulator]:
    """A started simulator on 127.0.0.1 (the port is its own choice, `sim.url` says which);
    stopped on leaving. Given neither users nor servers, it has config/simulator.toml's;
    given either, the simulator's own defaults stand in for the other."""
    if users is None and servers is None:
        users, servers = load_simulator_config(SIMULATOR_CONFIG)
    with Simulator(host="127.0.0.1", port=0, users=users, servers=servers, **options) as sim:
        yield sim


def api_path(index: int) -> str:
    """Server number `index`'s own path on the simulator, so its calls are counted apart."""
    return f"/s{index}{API_PATH}"


def calls_on(sim: Simulator, path: str) -> list[dict[str, Any]]:
    """Every call the simulator answered on `path`, oldest first."""
    return [call for call in sim.calls() if call["path"] == path]


def total_requests(sim: Simulator) -> int:
    return sum(sim.stats()["requests"].values())


class ScriptedVicidial:
    """A loopback web server answering each path with its own scripted body (HTTP 200)."""

    def __init__(self, bodies: Mapping[str, str]) -> None:
        self.bodies = dict(bodies)
        self.requests: Counter[str] = Counter()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                scripted.requests[self.path] += 1
                body = scripted.bodies.get(self.path, "").encode("utf-8")
                self.send_response(200 if self.path in scripted.bodies else 404)
                self.send_header("Content-Type", "text/html; charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # The default backlog of 5 overflows when 32 calls connect at once on a busy
            # machine; the dropped handshakes then read as resets (test noise, not refreshd).
            request_queue_size = 256

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

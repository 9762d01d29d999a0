"""`refreshd simulator`: run a simulator on loopback until Ctrl-C, SIGTERM or a stop event."""

from __future__ import annotations

import gc
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from refreshd.config import is_loopback_host
from refreshd.simulator.http import Simulator
from refreshd.simulator.rules import SimServer, SimUser
from refreshd.simulator.settings import load_simulator_config

if TYPE_CHECKING:
    from refreshd.simulator.database import SimDatabase

__all__ = ["serve"]


def serve(
    listen: str,
    config: Path | None,
    *,
    stop: threading.Event | None = None,
    allow_remote: bool = False,
    database: str | None = None,
    keepalive_interval: float | None = None,
) -> int:
    """Run a simulator until Ctrl-C, SIGTERM or `stop`; 0 after a clean stop,
    2 for a bad --listen, 78 for a bad config, 1 when the address cannot be bound."""
    try:
        host, port = _parse_listen(listen)
    except ValueError as exc:
        print(f"refreshd simulator: --listen {listen!r}: {exc}", file=sys.stderr)
        return 2
    if not allow_remote and not is_loopback_host(host):
        print(
            f"refreshd simulator: refusing to listen on {host!r}: the simulator accepts any "
            "password-shaped request and serves its call log, so it listens on loopback "
            "only (127.0.0.1, ::1 or localhost)",
            file=sys.stderr,
        )
        return 2
    users: list[SimUser] | None = None
    servers: list[SimServer] | None = None
    if config is not None:
        try:
            users, servers = load_simulator_config(config)
        except ValueError as exc:
            print(f"refreshd simulator: {exc}", file=sys.stderr)
            return 78
    mirror = None
    if database is not None:
        try:
            mirror = _database(database)
        except (ValueError, OSError) as exc:
            print(f"refreshd simulator: --database: {exc}", file=sys.stderr)
            return 78
    sim = Simulator(
        host=host,
        port=port,
        users=users,
        servers=servers,
        database=mirror,
        keepalive_interval=keepalive_interval,
    )
    try:
        sim.start()
    except OSError as exc:
        print(f"refreshd simulator: cannot listen on {listen}: {exc.strerror}", file=sys.stderr)
        return 1

    _run_until_stopped(sim, stop if stop is not None else threading.Event())
    return 0


def _run_until_stopped(sim: Simulator, stopped: threading.Event) -> None:
    """Announce the simulator's address on stdout, then serve until Ctrl-C, SIGTERM or
    `stopped`, and stop it."""
    previous: dict[int, Any] = {}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:

        def on_term(signum: int, frame: FrameType | None) -> None:
            stopped.set()

        # Ctrl-C too through a handler: a KeyboardInterrupt raised inside Event.wait could
        # leave the process hanging on a lock (seen once under load in the test suite).
        previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
        # As the daemon does: a full garbage collection of the start-up objects would
        # hold every request for ~20 ms, and the benchmarks time calls by this clock.
        gc.freeze()
    try:
        event = {"event": "simulator.started", "url": sim.url, "api_url": sim.api_url}
        print(json.dumps(event), flush=True)
        while not stopped.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def _database(url: str) -> SimDatabase:
    """The simulator's own tables in a MariaDB it may write to (a test's scratch database)."""
    import pymysql

    from refreshd.dburl import parse_database_url
    from refreshd.simulator.database import SimDatabase

    try:
        return SimDatabase(parse_database_url(url))
    except pymysql.MySQLError as error:
        raise ValueError(f"cannot use {url}: {error.args[-1]}") from None

"""Loopback ports for tests."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port() -> int:
    """A loopback port free now, for a daemon to listen on, taken below the kernel's
    ephemeral range: a port from `bind(0)` is in that range, where any busy process on the
    machine (a benchmark, another test run) may take it for an outgoing connection before
    the daemon binds it."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(10_000, min(ephemeral_low, 30_000))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")

"""Loopback ports for tests. A port to listen on is never picked here: the daemon and the
simulator take port 0 and say which port they got. What is left is a port where nothing
listens."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs: bound and
    held, never listening, so that no other process can take it meanwhile (a port bound,
    released and handed on could be)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])

"""Raw TCP sockets as hostile or plain clients use them: whether the far end closed one, and
whether this machine has an IPv6 loopback at all."""

from __future__ import annotations

import socket


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the far end closed `sock` (an orderly close or a reset); never blocks, and
    leaves `sock` non-blocking."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (containers without IPv6 have none)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True

"""Ports on 127.0.0.1 for servers the tests start."""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one handed out before in this session: the kernel may
    give a just-closed port again, and two servers started together then collide (seen in CI:
    both liveness endpoints of the HA test got the same port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port

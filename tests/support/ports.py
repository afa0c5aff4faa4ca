"""Ports for the servers tests start in processes of their own (``tds serve``, brokers).

Such a port is chosen before the server binds it, so it must not be one the kernel may hand
to anyone else meanwhile. ``bind(0)`` picks from the kernel's ephemeral range, the same
range every outgoing connection's local port comes from: in a CI run a database or gRPC
client took the port ``tds serve`` was about to listen on ("Address already in use"). These
ports come from below that range, which the kernel never assigns on its own.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_LOWEST = 10000
"""Below this are well-known and registered services' ports."""


def _ephemeral() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that the kernel will not
    give to an outgoing connection or to ``bind(0)``."""
    low, high = _ephemeral()
    ports = range(_LOWEST, low) if low - _LOWEST >= 1000 else range(high + 1, 65536)
    pick = random.SystemRandom().choice
    for _ in range(500):
        port = pick(ports)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # a server (or a connection in TIME_WAIT) has it: another
            return port
    raise RuntimeError(f"no free port between {ports.start} and {ports.stop - 1}")

"""A TCP pass-through load balancer for tests: one address in front of several replicas.

What an L4 balancer (Envoy's ``tcp_proxy``, HAProxy in ``mode tcp``) does for tds, and no
more: each connection goes to the first replica that accepts it, and TLS passes through
untouched, so the caller's mutual TLS and token reach the replica as they were sent. A
replica that is gone refuses connections, so the next connection goes to another one.

It also counts the bytes each replica sent back, and can slow one replica down
(``rate_bytes``), so a test can kill that replica part way through a transfer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Sequence

__all__ = ["FailoverProxy"]

_BLOCK = 64 * 1024


class FailoverProxy:
    """Listens on ``127.0.0.1:port`` and relays each connection to the first live backend."""

    def __init__(self, backends: Sequence[int], rate_bytes: dict[int, int] | None = None) -> None:
        self.backends = tuple(backends)
        self.rate_bytes = dict(rate_bytes or {})
        """Backend index -> bytes per second it may send back (absent: unlimited)."""
        self.sent = [0] * len(self.backends)
        """Bytes each backend sent back through the proxy."""
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, name="failover-accept", daemon=True).start()

    def close(self) -> None:
        """Stop accepting (relays already running end with their connections)."""
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        for index, port in enumerate(self.backends):
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue  # gone: the next replica takes the connection
            upstream.settimeout(None)
            threading.Thread(target=self._relay, args=(client, upstream, None), daemon=True).start()
            self._relay(upstream, client, index)
            return
        client.close()

    def _relay(self, src: socket.socket, dst: socket.socket, backend: int | None) -> None:
        started = time.monotonic()
        relayed = 0
        try:
            while data := src.recv(_BLOCK):
                dst.sendall(data)
                if backend is None:
                    continue
                relayed += len(data)
                with self._lock:
                    self.sent[backend] += len(data)
                rate = self.rate_bytes.get(backend)
                if rate:
                    ahead = relayed / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            # Either side ending ends the connection, as a balancer does.
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

"""BackgroundSite's stop leaves nothing open: a connection still in its TLS handshake
(a slow or stalled client, a port scanner) is closed with the rest, not left to the
garbage collector after the loop has ended."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
import threading
import time
import warnings
from pathlib import Path

import pytest
from aiohttp import web

from connector.dsp.server import tls_context
from connector.identity.names import Role
from connector.identity.pki import init_space
from connector.webserver import BackgroundSite


def _tls(root: Path) -> ssl.SSLContext:
    manifest = init_space(root, "city", [("gov", Role.GOVERNMENT)])
    gov = manifest.participant("gov")
    return tls_context(root / gov.tls_cert, root / gov.tls_key, (root / "ca.pem").read_bytes())


@pytest.mark.parametrize("tls", [True, False], ids=["tls-handshake-pending", "plain-half-request"])
def test_stop_closes_a_connection_no_handler_holds_yet(
    tmp_path: Path, tls: bool, caplog: pytest.LogCaptureFixture
) -> None:
    site = BackgroundSite("test-site")
    context = _tls(tmp_path) if tls else None
    port = site.start(web.Application(), "127.0.0.1", 0, ssl_context=context)
    client = socket.create_connection(("127.0.0.1", port))
    try:
        if not tls:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half a request
        time.sleep(0.3)  # accepted, and waiting for the rest
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.ERROR):
            warnings.simplefilter("always")
            site.stop()
            for _ in range(3):
                gc.collect()
        leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert leaked == []
        assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
        # The server's side is closed: the client reads the end of the stream.
        client.settimeout(5)
        assert client.recv(1) == b""
    finally:
        client.close()


def test_stop_returns_when_a_request_never_finishes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler still waiting when the site stops (a DSP request whose work hangs on a
    peer being stopped too) is cancelled after the grace: stopping returns, so the rest of
    the connector (its gRPC server, its threads) is stopped after it. It used to wait for
    aiohttp's own 60 s, time out after 10 and raise, leaving the process running."""
    import connector.webserver as webserver

    monkeypatch.setattr(webserver, "_GRACE_SECONDS", 0.5)
    monkeypatch.setattr(webserver, "_STOP_SECONDS", 3.0)
    entered = threading.Event()

    async def forever(_request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(3600)
        return web.Response()

    app = web.Application()
    app.router.add_get("/", forever)
    site = BackgroundSite("test-site")
    port = site.start(app, "127.0.0.1", 0)
    client = socket.create_connection(("127.0.0.1", port))
    try:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert entered.wait(5)
        started = time.monotonic()
        site.stop()
        assert time.monotonic() - started < 3.0
        site.stop()  # idempotent
    finally:
        client.close()

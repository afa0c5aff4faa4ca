"""An aiohttp application served on a thread and event loop of its own.

The connector is a threaded gRPC server; its two HTTP surfaces (the Dataspace Protocol
binding, ``connector.dsp``, and the browser console, ``connector.console``) run beside it
on one background event loop each, started and stopped from ordinary threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading

from aiohttp import web

from connector.aio import cancel_the_rest

__all__ = ["BackgroundSite"]

log = logging.getLogger(__name__)

_GRACE_SECONDS = 5.0
"""How long requests in flight may take to finish when a site stops; then they are
cancelled (aiohttp's ``shutdown_timeout``)."""

_STOP_SECONDS = _GRACE_SECONDS + 5.0
"""How long stopping waits for the loop's own clean-up before stopping it regardless."""


class BackgroundSite:
    """Serves one ``web.Application`` until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        """``name``: the serving thread's name (``tds-dsp``, ``tds-console``)."""
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def start(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> int:
        """Bind ``host:port`` (0: any free port) and serve; the bound port. Whatever
        binding raised (an address in use, a host that is not this machine's) is raised
        here, with nothing left running."""
        started = threading.Event()
        failure: list[BaseException] = []
        bound: list[int] = []
        loop = asyncio.new_event_loop()

        async def serve() -> None:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=_GRACE_SECONDS)
            await runner.setup()
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
            self._runner = runner
            server = site._server  # aiohttp exposes the bound port only here
            assert isinstance(server, asyncio.Server)
            bound.append(server.sockets[0].getsockname()[1])

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        thread = threading.Thread(target=main, name=self._name, daemon=True)
        thread.start()
        started.wait()
        if failure:
            thread.join()
            loop.close()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return bound[0]

    def stop(self) -> None:
        """Stop serving (requests in flight finish first, up to 5 s, then are cancelled);
        idempotent. Returns within about 10 s whatever a handler does: a stop that raised
        or hung would leave the rest of the connector running (its gRPC server, its
        threads), and the process with it."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        self._loop = self._thread = self._runner = None
        try:
            if runner is not None:
                done = asyncio.run_coroutine_threadsafe(_cleanup(runner), loop)
                try:
                    done.result(timeout=_STOP_SECONDS)
                except concurrent.futures.TimeoutError:
                    done.cancel()
                    log.warning(
                        "%s: requests still running %.0f s after the stop; stopped anyway",
                        self._name,
                        _STOP_SECONDS,
                    )
                    rest = asyncio.run_coroutine_threadsafe(cancel_the_rest(), loop)
                    with contextlib.suppress(Exception):
                        rest.result(timeout=2)
                except Exception:
                    log.exception("%s: cleaning up failed; stopped anyway", self._name)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_STOP_SECONDS)
            if thread.is_alive():  # a handler blocking the loop itself: leave it, a daemon
                log.warning("%s: the event loop did not stop; left running", self._name)
            else:
                loop.close()


async def _cleanup(runner: web.AppRunner) -> None:
    server = runner.server
    kept = [h.transport for h in (server.connections if server else [])]
    await runner.cleanup()
    # Connections a peer kept open (a DSP peer's sender keeps its own) are closed by now,
    # but a TLS transport finishes closing on the loop's next turns.
    await asyncio.sleep(0.1)
    # Except one whose peer holds it idle outside an event loop (a synchronous client, as
    # tds's DSP sender): TLS's close waits for the peer's close_notify, which such a peer
    # sends only when it next uses or closes the connection. Cut those, or the loop would
    # close with them open.
    for transport in kept:
        if transport is not None:
            transport.abort()
    # And a TLS connection still in its handshake belongs to no handler yet, only to the
    # task accepting it: cancelled, that task closes it.
    await cancel_the_rest()

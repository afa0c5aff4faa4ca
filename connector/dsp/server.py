"""The DSP 2025-1 HTTPS binding: an aiohttp server beside the gRPC services.

aiohttp serves it because it is a maintained asyncio HTTP stack with TLS through the
standard ``ssl`` module (so the peer's certificate is at hand for the identity check) and a
request-size limit of its own; the binding's tests and the data plane's pulls use its
client too (the outbox's messages go out with the standard library's, see
connector.dsp.delivery). Handlers run the connector's synchronous catalog and negotiator
(database, policy engine, audit log) in a bounded thread pool: the event loop only parses
and answers.

Identity is the space's own profile, as on gRPC: mutual TLS with a certificate of the space
CA plus the membership token in ``Authorization``, bound to that certificate; the
:class:`~connector.rpc.auth.Authenticator` that checks gRPC calls checks these too. Only the
protocol version document is served to a peer without a certificate. A request is
authenticated before its body is read: TLS lets a client without a certificate connect
(for the version document), and it must not make the server buffer a body it will refuse.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from connector.catalog.catalog import Catalog
from connector.config import DspConfig
from connector.dsp.errors import error_body, http_status
from connector.dsp.jsonld import check_outgoing, read_message
from connector.errors import ConfigError, ConnectorError, InvalidRequest
from connector.negotiation.negotiator import Negotiator
from connector.negotiation.outbox import Pending
from connector.rpc.auth import Access, Authenticator, Caller
from connector.webserver import BackgroundSite

__all__ = ["PROTOCOL_VERSION", "DspBinding", "Exchange"]

log = logging.getLogger(__name__)
T = TypeVar("T")
PROTOCOL_VERSION = "2025-1"
AUTH_PROFILE = {
    "protocol": "tds-mtls-membership",
    "version": "1",
    "profile": ["mtls-space-certificate", "membership-token-cnf-x5t#S256"],
}
_ERROR_KINDS = (
    ("/catalog/", "CatalogError"),
    ("/negotiations", "ContractNegotiationError"),
    ("/transfers", "TransferError"),
)


def _error_kind(path: str) -> str:
    for prefix, kind in _ERROR_KINDS:
        if path.startswith(prefix):
            return kind
    return "CatalogError"


_NOTHING_HELD: AbstractContextManager[list[Pending]] = contextlib.nullcontext([])
"""No outbox to hold messages of (its list stays empty: they were dispatched as usual)."""


@dataclass(frozen=True)
class Exchange:
    """What route handlers share: the connector's components and the request helpers."""

    participant: str
    space: str
    catalog: Catalog
    negotiator: Negotiator
    authenticator: Authenticator
    settings: DspConfig
    pool: concurrent.futures.ThreadPoolExecutor
    base_url: Callable[[], str]
    registered_host: Callable[[str], str]
    """The host of a participant's address in the operator's directory (callbacks may go
    nowhere else), looked up for every check (the registry client reads the directory
    its database holds at most every 0.25 s, so a look-up costs no query)."""
    hold: Callable[[], AbstractContextManager[list[Pending]]] = lambda: _NOTHING_HELD
    """Within it, the outbox messages this thread's transitions queue are kept back
    (committed, not yet sent) in the list it gives (``Outbox.held``)."""
    release: Callable[[list[Pending]], None] = lambda messages: None
    """Sends messages kept back by ``hold`` (``Outbox.dispatch``)."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run connector code (blocking: database, policy, log) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args))

    @staticmethod
    def presented(request: web.Request) -> tuple[list[bytes], list[str]]:
        """What a request presents to be identified by: its TLS client certificate (PEM)
        and its ``Authorization`` headers."""
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        pems = [ssl.DER_cert_to_PEM_cert(der).encode()] if der else []
        return pems, request.headers.getall("Authorization", [])

    def caller(self, request: web.Request) -> Caller:
        """The verified member behind a request (space certificate plus bound token), or
        ``AuthenticationError``: first, before the body is read.

        Checked on the event loop, with no hand-over to the worker threads: it is all in
        memory (the certificate's parse and the token's signature are remembered per PEM
        and per token, the revocation list is the one the registry client holds; the
        binding is never served by the operator, whose list is in its database)."""
        caller = self.authenticator.authenticate_presented(Access.MEMBER, *self.presented(request))
        assert caller is not None  # MEMBER access always names the caller
        return caller

    async def body(self, request: web.Request) -> bytes:
        """The request body, refused with 413 past ``dsp.max_body_bytes`` before it is read."""
        if request.content_length is not None and (
            request.content_length > self.settings.max_body_bytes
        ):
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.settings.max_body_bytes, actual_size=request.content_length
            )
        return await request.read()  # aiohttp enforces client_max_size while reading

    @staticmethod
    def read(raw: bytes, *types: str) -> dict[str, Any]:
        """A body as a DSP message of one of ``types`` (expanded, validated; blocking)."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest(
                "the body is not JSON: send a DSP message as application/json"
            ) from None
        return read_message(body, *types)

    def answer(
        self, message_type: str, document: dict[str, Any], status: int = 200
    ) -> web.Response:
        """A DSP message, checked against its schema before it leaves."""
        check_outgoing(message_type, document)
        return web.json_response(document, status=status)


_PIDS = web.RequestKey("tds_dsp_pids", tuple[str, str])


def note_pids(request: web.Request, provider_pid: str = "", consumer_pid: str = "") -> None:
    """Remember the process ids a request names, for its error body."""
    request[_PIDS] = (provider_pid, consumer_pid)


@web.middleware
async def _dsp_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every refusal is the endpoint's DSP error object with the matching HTTP status."""
    kind = _error_kind(request.path)
    try:
        return await handler(request)
    except ConnectorError as exc:
        status, reason = http_status(exc), str(exc)
        if status == 500:
            log.error("DSP request failed", extra={"path": request.path, "reason": reason})
            reason = "internal error in the connector; see its log"
        else:
            log.info(
                "DSP request refused",
                extra={"path": request.path, "status": status, "reason": reason},
            )
    except web.HTTPRequestEntityTooLarge:
        status = 413
        reason = "the body is larger than this connector accepts (dsp.max_body_bytes)"
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status, reason = exc.status, exc.reason
    except Exception:
        log.exception("unexpected error in the DSP binding", extra={"path": request.path})
        status, reason = 500, "internal error in the connector; see its log"
    provider_pid, consumer_pid = request.get(_PIDS, ("", ""))
    body = error_body(kind, status, reason, provider_pid=provider_pid, consumer_pid=consumer_pid)
    return web.json_response(check_outgoing(kind, body), status=status)


def _version(exchange: Exchange) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def version(request: web.Request) -> web.Response:
        """``GET /.well-known/dspace-version`` (DSP common binding §4.3): no identity needed."""
        document = {
            "protocolVersions": [
                {
                    "version": PROTOCOL_VERSION,
                    "path": "/",
                    "binding": "HTTPS",
                    "auth": AUTH_PROFILE,
                    "identifierType": "urn:tds:SPACE:participant:ID",
                    "serviceId": f"urn:tds:service:{exchange.participant}",
                }
            ]
        }
        return exchange.answer("VersionResponse", document)

    return version


def tls_context(cert_file: Path, key_file: Path, ca_pem: bytes) -> ssl.SSLContext:
    """Server TLS with the connector's certificate; a client certificate is asked for and,
    when presented, must chain to the space CA (the version document needs none)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca_pem.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


class DspBinding:
    """The HTTPS server of the binding, on its own event loop thread."""

    def __init__(
        self,
        *,
        settings: DspConfig,
        participant: str,
        space: str,
        catalog: Catalog,
        negotiator: Negotiator,
        authenticator: Authenticator,
        tls: ssl.SSLContext,
        registered_host: Callable[[str], str],
        workers: int = 8,
        routes: Sequence[Callable[[Exchange], list[web.RouteDef]]] = (),
        hold: Callable[[], AbstractContextManager[list[Pending]]] = lambda: _NOTHING_HELD,
        release: Callable[[list[Pending]], None] = lambda messages: None,
    ) -> None:
        """``routes``: more endpoint families (the transfer process), given the exchange;
        ``hold`` and ``release``: the outbox's (see ``Exchange``; by default nothing is
        held)."""
        self._routes = tuple(routes)
        self._settings = settings
        self._tls = tls
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tds-dsp")
        self.exchange = Exchange(
            participant=participant,
            space=space,
            catalog=catalog,
            negotiator=negotiator,
            authenticator=authenticator,
            settings=settings,
            pool=self._pool,
            base_url=lambda: self.base_url,
            registered_host=registered_host,
            hold=hold,
            release=release,
        )
        self._site = BackgroundSite("tds-dsp")
        self._port = 0

    @property
    def port(self) -> int:
        """The bound port (after ``start``)."""
        if not self._port:
            raise RuntimeError("the DSP binding is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """The https URL peers reach the binding at."""
        if self._settings.base_url:
            return self._settings.base_url.rstrip("/")
        host = self._settings.listen.rpartition(":")[0]
        return f"https://{host}:{self.port}"

    def _app(self) -> web.Application:
        from connector.dsp.catalog import catalog_routes
        from connector.dsp.negotiation import negotiation_routes

        app = web.Application(
            middlewares=[_dsp_errors], client_max_size=self._settings.max_body_bytes
        )
        app.router.add_get("/.well-known/dspace-version", _version(self.exchange))
        app.router.add_routes(catalog_routes(self.exchange))
        app.router.add_routes(negotiation_routes(self.exchange))
        for more in self._routes:
            app.router.add_routes(more(self.exchange))
        return app

    def start(self) -> None:
        """Bind and serve; ``ConfigError`` when the port cannot be bound."""
        host, _, port = self._settings.listen.rpartition(":")
        try:
            self._port = self._site.start(self._app(), host, int(port), ssl_context=self._tls)
        except Exception as exc:
            self._pool.shutdown(wait=False)
            raise ConfigError(f"dsp.listen {self._settings.listen}: {exc}") from None
        log.info("DSP binding serving", extra={"url": self.base_url})

    def stop(self) -> None:
        """Stop serving and wait for the work of requests in flight (what is still queued
        is not started: its request was cancelled with the site)."""
        self._site.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

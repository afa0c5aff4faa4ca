"""The ``HttpData`` pull endpoint: a transfer's delivered bytes over the DSP binding's port.

``GET /transfers/{pid}/data`` serves exactly what a gRPC ``Pull`` of the same transfer
streams — :meth:`TransferProvider.pulled`: the delivered form fixed at start (fields,
masks, SHA-256), the stored agreement verified, revocation, expiry, consent and the
transfer's state re-checked while it runs — with ``Range: bytes=N-`` (or ``N-M``) to
resume.

Who may read: the participant the data address was issued to, presenting its space
certificate over mutual TLS (checked as for every binding request: the space CA, validity,
the revocation list) and the data address's token as ``Authorization: Bearer <token>``
(instead of its membership token: the token is the narrower credential, bound to the
participant, the transfer and an expiry; connector.dsp.transfers). Refused: no
certificate or no token (401), a token not issued to the caller for this transfer,
forged or expired (401), a transfer that is not the caller's (404), a process suspended,
completed or terminated (403: the token is spent, or, suspended, refused until it is
resumed). A pull in flight stops within about 0.25 s of its process leaving STARTED
(suspended, terminated, the agreement revoked): the headers are gone by then, so the
connection is closed short of ``Content-Length``; the next request gets the 403.
"""

from __future__ import annotations

import base64
import itertools
import logging
import re
import time
from collections.abc import Iterator

from aiohttp import web

from connector.dsp.negotiation import local_pid
from connector.dsp.server import Exchange, note_pids
from connector.dsp.transfers import PROVIDER_STATE_SERVED, DspTransfer
from connector.errors import AuthenticationError, ConnectorError, NotFound, PermissionDenied
from connector.identifiers import TRANSFER_ID
from connector.identity.names import PARTICIPANT_URI_KIND
from connector.rpc.auth import Access, Caller
from connector.transfer.provider import STOP_CHECK_SECONDS
from connector.transfer.store import PROVIDER

__all__ = ["data_route"]

log = logging.getLogger(__name__)

_CHUNKS_PER_HOP = 4
_RANGE = re.compile(r"bytes=(\d{1,19})-(\d{0,19})")


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a ``Range`` header, ``None`` for none; one range only."""
    if header is None:
        return None
    found = _RANGE.fullmatch(header.strip())
    if found is None:
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={"Content-Range": f"bytes */{size}"},
            reason="give one range, bytes=FIRST- or bytes=FIRST-LAST",
        )
    first = int(found[1])
    last = int(found[2]) if found[2] else size - 1
    if first > last or first >= size:
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={"Content-Range": f"bytes */{size}"},
            reason=f"the range is outside the transfer's {size} bytes",
        )
    return first, min(last, size - 1)


def _bearer(request: web.Request) -> str:
    values = request.headers.getall("Authorization", [])
    if len(values) != 1:
        raise AuthenticationError(
            "send the data address's token once, as 'Authorization: Bearer <token>'"
        )
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("authorization must be 'Bearer <the data address token>'")
    return token.strip()


def data_route(exchange: Exchange, side: object) -> web.RouteDef:
    """``GET /transfers/{pid}/data``."""
    from connector.dsp.transfer import TransferSide, shown_state

    assert isinstance(side, TransferSide)

    def caller_of(request: web.Request) -> Caller:
        pems, _ = exchange.presented(request)
        caller = exchange.authenticator.authenticate_presented(Access.CERTIFICATE, pems, [])
        assert caller is not None
        if caller.kind != PARTICIPANT_URI_KIND:
            raise PermissionDenied("the data address is read with a participant certificate")
        return caller

    def permitted(caller: Caller, pid: str, token: str) -> DspTransfer:
        transfer_id = TRANSFER_ID.check(local_pid(pid), error=NotFound)
        try:
            row = side.store.get(transfer_id)
        except NotFound:
            raise NotFound("no such transfer process") from None
        if row.role != PROVIDER:
            raise NotFound("no such transfer process")
        if not side.tokens.valid(token, row.transfer_id, caller.participant, row.token_expires_ms):
            # Another participant's certificate with the consumer's token lands here too.
            raise AuthenticationError(
                "the token is not the data address token of this transfer for you"
            )
        if side.now_ms() >= row.token_expires_ms:
            raise AuthenticationError("the data address token has expired")
        state = shown_state(side, row)
        if state not in PROVIDER_STATE_SERVED:
            raise PermissionDenied(
                f"the transfer process is {state}: its data address is no longer served"
            )
        return row

    async def data(request: web.Request) -> web.StreamResponse:
        """The delivered bytes (``HttpData`` pull; see the module's docstring)."""
        pid = request.match_info["pid"]
        note_pids(request, provider_pid=pid)
        caller = caller_of(request)
        token = _bearer(request)

        def opened() -> tuple[str, int, int, int, str, Iterator[tuple[int, bytes]]]:
            row = permitted(caller, pid, token)
            t = side.transfers.get(row.transfer_id)
            wanted = _range(request.headers.get("Range"), t.size) if t.size else None
            first, last = wanted if wanted is not None else (0, t.size - 1)
            t, chunks = side.provider.pulled(caller, row.transfer_id, first)
            return row.transfer_id, first, last, t.size, t.sha256, chunks

        row_id, first, last, size, sha256, chunks = await exchange.run(opened)
        partial = request.headers.get("Range") is not None and size > 0
        response = web.StreamResponse(status=206 if partial else 200)
        response.content_length = max(last - first + 1, 0)
        response.content_type = "application/octet-stream"
        response.headers["Accept-Ranges"] = "bytes"
        # RFC 9530: the digest of the whole delivered form (what the receipt names).
        response.headers["Repr-Digest"] = (
            f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"
        )
        if partial:
            response.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        await response.prepare(request)

        checked = time.monotonic()

        def batch() -> list[tuple[int, bytes]]:
            # The process is re-read as often as the transfer's stop reasons are (under
            # ``chunks``): a suspension or termination stops a pull in flight.
            nonlocal checked
            if time.monotonic() - checked >= STOP_CHECK_SECONDS:
                checked = time.monotonic()
                state = shown_state(side, side.store.get(row_id))
                if state not in PROVIDER_STATE_SERVED:
                    raise PermissionDenied(f"the transfer process is {state}: the pull stops")
            # Several chunks per hand-over to the worker threads: each costs a switch.
            return list(itertools.islice(chunks, _CHUNKS_PER_HOP))

        try:
            while got := await exchange.run(batch):
                for at, block in got:
                    if at > last:
                        break
                    await response.write(block[: last + 1 - at])
                if got[-1][0] > last:
                    break
        except ConnectorError as exc:
            # Stopped while streaming (revoked, terminated, expired): the headers are
            # gone, so the connection is closed short of Content-Length, which a client
            # sees as an incomplete body; the reason is in the log and the audit log.
            log.info("HttpData pull stopped", extra={"path": request.path, "reason": str(exc)})
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                await exchange.run(close)
        await response.write_eof()
        return response

    return web.get("/transfers/{pid}/data", data)

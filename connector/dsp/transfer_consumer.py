"""A tds connector as a DSP consumer of transfers: request, take the start message at its
callback, pull over HTTPS, complete with its signed receipt.

``tds transfer --dsp URL --agreement ID`` (``TransferRequest.dsp_url``) runs here. The
steps are those of a gRPC transfer, through :class:`TransferConsumer` — the same manifest
checks (against our own copy of the agreement), holding, integrity check, signed receipt
and audit entries — with DSP messages in place of gRPC calls:

1. ``TransferRequestMessage`` (format ``HttpData-PULL``, callback: this connector's
   binding) POSTed to the provider's ``/transfers/request``;
2. the provider's ``TransferStartMessage`` arrives at ``/transfers/{cid}/start`` with the
   data address and (tds profile) the manifest; the endpoint must be https on the
   provider's registered host, as any address this connector sends a request to;
3. ``GET`` the endpoint with the token (``Range: bytes=N-`` to resume after a break);
4. ``TransferCompletionMessage`` with the signed receipt (``urn:tds:signedReceipt``); a tds
   provider answers with the ``TransferProcess`` and its countersignature.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from google.protobuf import json_format

from connector._proto.tds.v1 import transfer_pb2
from connector.dsp.delivery import DspSender
from connector.dsp.jsonld import check_outgoing, read_message
from connector.dsp.negotiation import check_callback, local_pid
from connector.dsp.transfer import TransferSide, paused_entry
from connector.dsp.transfers import (
    COMPLETED,
    MANIFEST,
    REQUESTED,
    SIGNED_RECEIPT,
    STARTED,
    SUSPENDED,
    TERMINATED,
    DspTransfer,
    completion_message,
    request_message,
    termination_message,
)
from connector.errors import (
    AuthenticationError,
    ConnectorError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
    VerificationError,
)
from connector.identity.names import participant_dns_name
from connector.negotiation.dsp import process_id
from connector.rpc.auth import Caller
from connector.transfer.consumer import Progress, ProgressSink, TransferConsumer
from connector.transfer.receiving import Assembler
from connector.transfer.store import ACTIVE, CONSUMER, PROVIDER, Transfer
from connector.transfer.store import COMPLETED as COMPLETED_TRANSFER

__all__ = ["DspTransferConsumer"]

_STATUS_ERRORS: dict[int, type[ConnectorError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    413: InvalidRequest,
}
START_WAIT_SECONDS = 60.0
"""How long a request waits for the provider's start message."""
SUSPENDED_WAIT_SECONDS = 3600.0
"""How long a running pull waits for a suspended process to be resumed; then the transfer
ends here (TERMINATED, the provider told) rather than hold a job open without end."""


def _refusal(peer: str, status: int, body: Any) -> ConnectorError:
    reasons = body.get("reason") if isinstance(body, dict) else None
    reason = (
        f"{peer} answered {status}: {'; '.join(map(str, reasons or [])) or 'no DSP error body'}"
    )
    return _STATUS_ERRORS.get(status, Unavailable)(reason[:1000])


class DspTransferConsumer:
    """See the module's docstring."""

    def __init__(
        self,
        *,
        side: TransferSide,
        receiver: TransferConsumer,
        sender: DspSender,
        callback: Callable[[], str],
        registered_host: Callable[[str], str],
    ) -> None:
        self._side = side
        self._receiver = receiver
        self._sender = sender
        self._callback = callback
        self._registered_host = registered_host
        self.suspended_wait = SUSPENDED_WAIT_SECONDS
        """How long a pull waits for a suspended process to be resumed before it ends."""

    # -- the admin's request ---------------------------------------------------------------

    def run(self, agreement_id: str, provider_url: str, progress: ProgressSink) -> Transfer:
        """Request a transfer under ``agreement_id`` from the provider's binding at
        ``provider_url``, pull it and see it through to a dual-signed receipt."""
        agreement = self._receiver.agreement_of(agreement_id)
        provider = agreement.provider
        address = provider_url.rstrip("/")
        check_callback(address, provider, self._registered_host)  # ours to check, too
        now = self._side.now_ms()
        cid = f"dspc-{uuid.uuid4().hex}"
        self._side.store.add(
            DspTransfer(
                transfer_id=cid,
                role=CONSUMER,
                counterparty=provider,
                peer_pid=f"pending:{cid}",
                callback=address,
                request_digest="",
                state=REQUESTED,
                token_expires_ms=0,
                created_ms=now,
                updated_ms=now,
                data_address=json.dumps({"agreement": agreement.id}),
            )
        )
        message = request_message(cid, agreement.id, self._callback())
        try:
            answer = self._post(address + "/transfers/request", provider, message)
            shown = read_message(answer, "TransferProcess")
            if local_pid(str(shown["consumerPid"])) != cid:
                raise VerificationError("the provider answered about another transfer process")
            provider_pid = local_pid(str(shown["providerPid"]))
            # The start message may have come first (it names the same provider process):
            # then this sets what it set already.
            self._side.store.move(
                cid,
                expect=frozenset({REQUESTED, STARTED}),
                now_ms=self._side.now_ms(),
                peer_pid=provider_pid,
            )
            t = self._wait_started(cid)
        except ConnectorError as exc:
            self._ended(cid, f"not started: {exc}")
            raise
        row = self._side.store.get(cid)
        return self._receive(row, t, progress)

    def runs(self, transfer_id: str) -> bool:
        """Whether ``transfer_id`` is a transfer this connector receives over the binding."""
        try:
            t = self._side.transfers.get(transfer_id)
            self._side.store.of_transfer(t.id, t.counterparty, CONSUMER)
        except NotFound:
            return False
        return t.role == CONSUMER

    def resume(self, transfer_id: str, progress: ProgressSink) -> Transfer:
        """Pull the rest of a transfer whose pull stopped with this connector (a restart),
        from the bytes held, with the data address the provider gave (valid for as long
        as its token is), and complete it with a dual-signed receipt."""
        t = self._receiver.to_resume(transfer_id, progress)
        if t.state == COMPLETED_TRANSFER:
            return t
        row = self._side.store.of_transfer(t.id, t.counterparty, CONSUMER)
        if row.state not in (STARTED, SUSPENDED):
            raise PreconditionFailed(
                f"transfer {transfer_id}'s transfer process is {row.state}: only an "
                "unfinished one resumes"
            )
        return self._receive(row, t, progress)

    def _receive(self, row: DspTransfer, t: Transfer, progress: ProgressSink) -> Transfer:
        """Pull ``t`` over the process ``row`` (from the bytes held) and complete it."""
        return self._receiver.receive_and_complete(
            t,
            progress,
            fill=lambda t, asm, progress: self._fill(row, t, asm, progress),
            countersign=lambda t, signed: self._countersigned(row, t, signed),
            tell=lambda reason: self._tell(row, reason),
        )

    def _post(self, url: str, peer: str, message: dict[str, Any]) -> Any:
        check_outgoing(str(message["@type"]), message)
        status, body = self._sender.post(url, peer, message)
        if not 200 <= status < 300:
            raise _refusal(peer, status, body)
        return body

    def _wait_started(self, cid: str) -> Transfer:
        deadline = time.monotonic() + START_WAIT_SECONDS
        while True:
            row = self._side.store.get(cid)
            if row.state == STARTED and not row.peer_pid.startswith("pending:"):
                return self._side.transfers.get(local_pid(row.peer_pid))
            if row.state == TERMINATED:
                raise PreconditionFailed("the provider terminated the transfer process")
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"the provider's start message did not arrive within {START_WAIT_SECONDS:.0f} s"
                )
            time.sleep(0.05)

    def _ended(self, cid: str, reason: str) -> None:
        with contextlib.suppress(PreconditionFailed, NotFound):
            self._side.store.move(
                cid,
                expect=frozenset({REQUESTED, STARTED, SUSPENDED}),
                now_ms=self._side.now_ms(),
                state=TERMINATED,
            )

    # -- pulling -----------------------------------------------------------------------

    def _fill(self, row: DspTransfer, t: Transfer, asm: Assembler, progress: ProgressSink) -> None:
        """``GET`` the data address until every byte is held, resuming with ``Range``."""
        address = json.loads(self._side.store.get(row.transfer_id).data_address)
        endpoint, token = str(address["endpoint"]), str(address["token"])
        check_callback(endpoint, t.counterparty, self._registered_host)
        resume_for = self._receiver.resume_for
        last_progress = time.monotonic()
        while not asm.complete:
            held = asm.received
            try:
                self._pull(endpoint, token, t, asm, progress)
            except VerificationError as exc:
                self._receiver.fail(t, f"integrity: {exc}", tell_provider=True)
                raise
            except Unavailable as exc:
                if asm.received > held:
                    last_progress = time.monotonic()
                if time.monotonic() - last_progress > resume_for:
                    self._receiver.fail(t, f"no progress for {resume_for:.0f} s: {exc}")
                    raise
                progress(Progress("resuming", t, asm.received, detail=str(exc)))
                time.sleep(0.5)
                continue
            except ConnectorError as exc:  # refused: suspended, terminated, revoked …
                try:
                    again = isinstance(exc, PermissionDenied) and self._suspended(
                        row, t, asm, progress
                    )
                except PreconditionFailed as waited:  # suspended too long: end it, say so
                    self._receiver.end(t, str(waited))
                    with contextlib.suppress(ConnectorError):
                        self._tell(row, str(waited))
                    self._ended(row.transfer_id, str(waited))
                    raise
                if again:
                    # Started again: the provider's resumption may carry a new address.
                    address = json.loads(self._side.store.get(row.transfer_id).data_address)
                    endpoint, token = str(address["endpoint"]), str(address["token"])
                    check_callback(endpoint, t.counterparty, self._registered_host)
                    last_progress = time.monotonic()
                    continue
                self._receiver.end(t, str(exc))
                self._ended(row.transfer_id, str(exc))
                raise
            if asm.received == held and not asm.complete:
                why = f"the provider ended the body at {asm.received} of {t.size} bytes"
                self._receiver.fail(t, f"integrity: {why}", tell_provider=True)
                raise VerificationError(why)

    def _provider_state(self, row: DspTransfer) -> str:
        """The process's state as the provider shows it (``GET /transfers/{pid}``); ``""``
        when it cannot be asked now."""
        current = self._side.store.get(row.transfer_id)
        url = f"{current.callback}/transfers/{process_id(current.peer_pid)}"
        try:
            status, body = self._sender.get(url, current.counterparty)
            if status != 200:
                return ""
            return str(read_message(body, "TransferProcess")["state"])
        except ConnectorError:
            return ""

    def _suspended(
        self, row: DspTransfer, t: Transfer, asm: Assembler, progress: ProgressSink
    ) -> bool:
        """The data address was refused: whether because the process is suspended (by
        either side; the provider is asked, its message may not be here yet). Then wait
        until it is STARTED again on both sides (``True``: pull again), or ended, or
        suspended for longer than :attr:`suspended_wait` (``False``: the refusal stands,
        or ``PreconditionFailed``)."""
        deadline = time.monotonic() + self.suspended_wait
        seen = False
        while True:
            current = self._side.store.get(row.transfer_id)
            mine = current.state
            theirs = self._provider_state(row)
            if mine in (COMPLETED, TERMINATED) or theirs in (COMPLETED, TERMINATED):
                return False
            if SUSPENDED not in (mine, theirs):
                if seen and mine == STARTED and theirs == STARTED:
                    return True
                if not seen:
                    return False  # refused for another reason
            elif not seen:
                seen = True
                who = "this connector" if current.suspended_by == CONSUMER else "the provider"
                progress(
                    Progress("resuming", t, asm.received, detail=f"suspended by {who}; waiting")
                )
            if time.monotonic() > deadline:
                raise PreconditionFailed(
                    f"the transfer process stayed SUSPENDED for {self.suspended_wait:.0f} s"
                )
            time.sleep(1.0)  # each look asks the provider

    def _pull(
        self, endpoint: str, token: str, t: Transfer, asm: Assembler, progress: ProgressSink
    ) -> None:
        server_name = participant_dns_name(self._sender.space, t.counterparty)

        async def run() -> None:
            context = self._sender.tls()
            headers = {"Authorization": f"Bearer {token}"}
            if asm.received:
                headers["Range"] = f"bytes={asm.received}-"
            timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(
                    endpoint,
                    headers=headers,
                    ssl=context,
                    server_hostname=server_name,
                    allow_redirects=False,
                ) as response,
            ):
                if response.status not in (200, 206):
                    raw = await response.content.read(64 * 1024)
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                    raise _refusal(t.counterparty, response.status, body)
                at = asm.received
                if response.status == 200 and at:
                    raise VerificationError("the provider ignored the Range of a resumed pull")
                reported = 0.0
                async for block in response.content.iter_chunked(t.chunk_size):
                    asm.add(at, block)
                    at += len(block)
                    now = time.monotonic()
                    if now - reported >= 0.2:
                        reported = now
                        progress(Progress("receiving", t, asm.received))

        try:
            asyncio.run(run())
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise Unavailable(
                f"{t.counterparty}'s data address: {exc or type(exc).__name__}"
            ) from None

    # -- completion and ending -----------------------------------------------------------

    def _countersigned(self, row: DspTransfer, t: Transfer, signed: str) -> str:
        provider_pid = local_pid(self._side.store.get(row.transfer_id).peer_pid)
        message = completion_message(provider_pid, row.transfer_id, signed)
        url = f"{row.callback}/transfers/{message['providerPid']}/completion"
        deadline = time.monotonic() + self._receiver.resume_for
        while True:
            try:
                answer = self._post(url, t.counterparty, message)
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        countersigned = answer.get(SIGNED_RECEIPT) if isinstance(answer, dict) else None
        if not isinstance(countersigned, str) or not countersigned:
            raise VerificationError("the provider's answer carries no countersigned receipt")
        self._side.store.move(
            row.transfer_id,
            expect=frozenset({STARTED, COMPLETED}),
            now_ms=self._side.now_ms(),
            state=COMPLETED,
        )
        return countersigned

    def _tell(self, row: DspTransfer, reason: str) -> None:
        provider_pid = local_pid(self._side.store.get(row.transfer_id).peer_pid)
        message = termination_message(provider_pid, row.transfer_id, [reason])
        url = f"{row.callback}/transfers/{message['providerPid']}/termination"
        self._post(url, row.counterparty, message)
        self._ended(row.transfer_id, reason)

    # -- the provider's messages at our callback ------------------------------------------

    def started(
        self,
        caller: Caller,
        message: dict[str, Any],
        row: DspTransfer,
        shown: Callable[[DspTransfer], dict[str, Any]],
    ) -> dict[str, Any]:
        """``#transfers-consumerpid-start-post``: the data address and the manifest."""
        if row.state == STARTED and "endpoint" in json.loads(row.data_address):
            return shown(row)  # a repeat: nothing changed
        if row.state == SUSPENDED:
            return self._resumed(caller, message, row, shown)
        if row.state != REQUESTED:
            raise PreconditionFailed(f"the transfer process is {row.state}: it cannot start")
        provider_pid = local_pid(str(message["providerPid"]))
        endpoint, token = self._address(caller, message)
        manifest_json = message.get(MANIFEST)
        if not isinstance(manifest_json, str):
            raise InvalidRequest(
                f"a tds consumer takes a transfer only with its manifest ({MANIFEST}): it "
                "checks and signs its receipt over it"
            )
        try:
            manifest = json_format.Parse(manifest_json, transfer_pb2.TransferManifest())
        except json_format.ParseError:
            raise InvalidRequest(f"{MANIFEST} is not a transfer manifest") from None
        if manifest.transfer_id != provider_pid:
            raise InvalidRequest("the manifest names another transfer than the providerPid")
        wanted = str(json.loads(row.data_address)["agreement"])
        agreement = self._receiver.agreement_of(wanted)
        if agreement.provider != caller.participant:
            raise NotFound("no such transfer process")
        self._receiver.take_manifest(manifest, agreement)
        kept = {"agreement": wanted, "endpoint": endpoint, "token": token}
        return shown(
            self._side.store.move(
                row.transfer_id,
                expect=frozenset({REQUESTED}),
                now_ms=self._side.now_ms(),
                state=STARTED,
                peer_pid=provider_pid,
                data_address=json.dumps(kept),
            )
        )

    def _address(self, caller: Caller, message: dict[str, Any]) -> tuple[str, str]:
        """The endpoint and token of a start message's data address: https on the host
        the operator registered for the provider (nowhere else is pulled from)."""
        address = message.get("dataAddress")
        if not isinstance(address, dict) or not address.get("endpoint"):
            raise InvalidRequest("a start message of an HttpData pull carries its dataAddress")
        endpoint = str(address["endpoint"])
        check_callback(endpoint, caller.participant, self._registered_host)
        props = address.get("endpointProperties", [])
        props = props if isinstance(props, list) else [props]
        named = {str(p.get("name")): str(p.get("value")) for p in props if isinstance(p, dict)}
        if not named.get("authorization"):
            raise InvalidRequest("the dataAddress gives no authorization endpoint property")
        return endpoint, named["authorization"]

    def _resumed(
        self,
        caller: Caller,
        message: dict[str, Any],
        row: DspTransfer,
        shown: Callable[[DspTransfer], dict[str, Any]],
    ) -> dict[str, Any]:
        """The provider resumes a process it suspended: its start message carries the
        data address again (a pull's), which the waiting pull takes up."""
        if row.suspended_by == CONSUMER:
            raise PreconditionFailed(
                "this consumer suspended the transfer process: only it resumes it"
            )
        endpoint, token = self._address(caller, message)
        manifest_json = message.get(MANIFEST)
        if manifest_json is not None:
            try:
                named = json.loads(str(manifest_json)).get("transfer_id")
            except (ValueError, AttributeError):
                raise InvalidRequest(f"{MANIFEST} is not a transfer manifest") from None
            if named != row.peer_pid:
                raise InvalidRequest("the manifest names another transfer than the providerPid")
        kept = {**json.loads(row.data_address), "endpoint": endpoint, "token": token}
        return shown(
            self._side.store.move(
                row.transfer_id,
                expect=frozenset({SUSPENDED}),
                now_ms=self._side.now_ms(),
                state=STARTED,
                suspended_by="",
                data_address=json.dumps(kept),
                log=paused_entry(self._side, row, suspended=False, by=PROVIDER),
            )
        )

    def completed(
        self,
        caller: Caller,
        message: dict[str, Any],
        row: DspTransfer,
        shown: Callable[[DspTransfer], dict[str, Any]],
    ) -> dict[str, Any]:
        """``#transfers-consumerpid-completion-post``: a tds consumer completes its pulls
        itself (with its receipt); the provider's completion is taken once it has."""
        if row.state == COMPLETED:
            return shown(row)
        raise PreconditionFailed(
            "this consumer completes the transfer itself, with its signed receipt"
        )

    def terminated(self, row: DspTransfer, reason: str) -> None:
        """The provider ended the process: end the transfer under it, here."""
        if row.peer_pid.startswith("pending:"):
            return
        try:
            t = self._side.transfers.get(local_pid(row.peer_pid))
        except NotFound:
            return
        if t.state in ACTIVE:
            self._receiver.end(t, f"terminated by the provider: {reason}")

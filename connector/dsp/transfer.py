"""DSP transfer process over the HTTPS binding, both roles (DSP 2025-1, transfer process
HTTPS binding; docstrings name the specification's anchors).

Provider side: ``POST /transfers/request`` is decided exactly as gRPC's ``StartTransfer``
— the same :meth:`TransferProvider.start` (agreement checks, usage policy, metering, the
transfer record and its audit entries) — then the ``TransferStartMessage`` with the
``HttpData`` data address goes to the consumer's callback through the outbox.
``GET /transfers/{pid}``, and ``/start`` (resume), ``/completion`` (with the consumer's
signed receipt, tds profile, or without it), ``/suspension``, ``/termination``.

The state machine is the specification's (transfer process protocol, *State Machine*):
REQUESTED → STARTED (provider), STARTED → SUSPENDED / COMPLETED / TERMINATED and
SUSPENDED → STARTED / TERMINATED (either side), REQUESTED → TERMINATED (either side);
COMPLETED and TERMINATED are final. tds adds one rule the specification leaves to the
implementation: the side that suspended a process is the one that resumes it (a
consumer's start message does not undo the provider operator's suspension, nor the
reverse); the other side's start message is refused, 400, nothing changed.

Consumer side (a tds consumer's callback address is its binding's base URL): the
provider's ``/transfers/{cid}/start`` (with the data address), ``/completion``,
``/suspension`` and ``/termination``. One path serves both roles where the specification
gives both the same one: the process id in the path says which of this connector's
processes, and so which role, a message is for.

A message the process has taken already (the same sender, the same content) is answered
again and changes nothing; one the state machine does not take in the process's state is
a 400 with nothing changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pyld import jsonld

from connector.audit.canonical import canonical_json
from connector.audit.log import AuditLog
from connector.clock import Clock
from connector.dsp.negotiation import check_callback, local_pid
from connector.dsp.server import Exchange, note_pids
from connector.dsp.transfers import (
    COMPLETED,
    FINAL,
    FORMAT,
    REQUESTED,
    SIGNED_RECEIPT,
    STARTED,
    SUSPENDED,
    TERMINATED,
    TRANSFER_METHOD,
    DataTokens,
    DspTransfer,
    DspTransferStore,
    process_message,
)
from connector.errors import InvalidRequest, NotFound, PreconditionFailed
from connector.negotiation.store import NegotiationStore
from connector.rpc.auth import Caller
from connector.store.database import RawTransaction
from connector.transfer import store as records
from connector.transfer.provider import TransferProvider, new_transfer_id
from connector.transfer.store import TransferStore

if TYPE_CHECKING:
    from connector.dsp.transfer_consumer import DspTransferConsumer

__all__ = ["TransferSide", "paused_entry", "shown_state", "transfer_routes"]

_AGREEMENT_PREFIX = "urn:tds:agreement:"
PROVIDER, CONSUMER = records.PROVIDER, records.CONSUMER


@dataclass(frozen=True)
class TransferSide:
    """What the transfer endpoints and the data plane share."""

    provider: TransferProvider
    transfers: TransferStore
    store: DspTransferStore
    tokens: DataTokens
    negotiations: NegotiationStore
    clock: Clock
    token_seconds: int
    """How long a data address's token is valid for (the pull, and its resumes)."""
    audit: AuditLog
    """Where a suspension or resumption is logged, in the commit that makes it."""
    consumer: Callable[[], DspTransferConsumer | None] = lambda: None
    """This connector as a DSP consumer (its callbacks), when it acts as one."""

    def now_ms(self) -> int:
        """The clock, in milliseconds."""
        return int(self.clock.now() * 1000)


def shown_state(side: TransferSide, row: DspTransfer) -> str:
    """The DSP state of a process: its own, unless the transfer under it has ended (an
    admin's termination, a revocation, a failed integrity check end it without a DSP
    message from the peer)."""
    if row.state in FINAL:
        return row.state
    transfer_id = row.transfer_id if row.role == PROVIDER else local_pid(row.peer_pid)
    try:
        t = side.transfers.get(transfer_id)
    except NotFound:
        return row.state
    if t.state == records.COMPLETED:
        return COMPLETED
    if t.state in (records.FAILED, records.TERMINATED):
        return TERMINATED
    return row.state


def paused_entry(
    side: TransferSide, row: DspTransfer, *, suspended: bool, by: str, reason: str = ""
) -> Callable[[RawTransaction], object]:
    """The log entry of a process suspended (``transfer.suspended``) or resumed
    (``transfer.resumed``) by ``by`` (``provider``/``consumer``), to append in the commit
    that moves it: a suspension stops the data flowing under a contract, which the
    evidence must show as it shows a termination."""
    transfer_id = row.transfer_id if row.role == PROVIDER else local_pid(row.peer_pid)
    try:
        agreement_id = side.transfers.get(transfer_id).agreement_id
    except NotFound:
        agreement_id = ""
    data: dict[str, Any] = {
        "transfer": transfer_id,
        "process": row.transfer_id,
        "agreement": agreement_id,
        "by": by,
    }
    if reason:
        data["reason"] = reason[:300]
    kind = "transfer.suspended" if suspended else "transfer.resumed"
    return side.audit.prepare([(kind, [row.counterparty], data)])


def digest(caller: Caller, message: dict[str, Any]) -> str:
    """What makes a message a repeat: the same sender and content."""
    return hashlib.sha256(caller.participant.encode() + b"\n" + canonical_json(message)).hexdigest()


def transfer_routes(side: TransferSide) -> Callable[[Exchange], list[web.RouteDef]]:
    """The transfer endpoints (both roles), for ``DspBinding(routes=…)``."""

    def routes(exchange: Exchange) -> list[web.RouteDef]:
        return _routes(exchange, side)

    return routes


def _routes(exchange: Exchange, side: TransferSide) -> list[web.RouteDef]:
    def own(caller: Caller, pid: str) -> DspTransfer:
        try:
            row = side.store.get(local_pid(pid))
        except NotFound:
            raise NotFound("no such transfer process") from None
        # Another participant's process looks exactly like a missing one (DSP: 404).
        if row.counterparty != caller.participant:
            raise NotFound("no such transfer process")
        return row

    def shown(row: DspTransfer, **extra: Any) -> dict[str, Any]:
        provider_pid, consumer_pid = (
            (row.transfer_id, row.peer_pid)
            if row.role == PROVIDER
            else (row.peer_pid, row.transfer_id)
        )
        return {**process_message(provider_pid, consumer_pid, shown_state(side, row)), **extra}

    def addressed(caller: Caller, pid: str, message: dict[str, Any]) -> DspTransfer:
        """Our process the path names, with the message naming it and its peer's process
        id as we know them (a consumer may not know the provider's yet)."""
        row = own(caller, pid)
        mine, theirs = (
            ("providerPid", "consumerPid")
            if row.role == PROVIDER
            else ("consumerPid", "providerPid")
        )
        if local_pid(str(message[mine])) != row.transfer_id:
            raise InvalidRequest(f"the message's {mine} is not the process in the path")
        if (
            not row.peer_pid.startswith("pending:")
            and local_pid(str(message[theirs])) != row.peer_pid
        ):
            raise NotFound("no such transfer process")
        return row

    async def serve(
        request: web.Request,
        message_type: str,
        act: Callable[[Caller, dict[str, Any], DspTransfer], dict[str, Any]],
    ) -> web.Response:
        """A message to ``/transfers/{pid}/…``: who sent it (before its body is read),
        what it says, which of our processes it is for, then ``act`` on it; ``act``
        answers with the ``TransferProcess`` as it is now."""
        pid = request.match_info["pid"]
        note_pids(request, provider_pid=pid)
        caller = exchange.caller(request)
        raw = await exchange.body(request)

        def work() -> dict[str, Any]:
            message = exchange.read(raw, message_type)
            note_pids(request, str(message["providerPid"]), str(message["consumerPid"]))
            return act(caller, message, addressed(caller, pid, message))

        return exchange.answer("TransferProcess", await exchange.run(work))

    # -- provider --------------------------------------------------------------------

    async def request_transfer(request: web.Request) -> web.Response:
        """``#transfers-request-post``: decided as gRPC's StartTransfer; then the start
        message, with the data address, goes to the callback address."""
        caller = exchange.caller(request)  # before the body is read
        raw = await exchange.body(request)

        def work() -> dict[str, Any]:
            message = exchange.read(raw, "TransferRequestMessage")
            consumer_pid = local_pid(str(message["consumerPid"]))
            note_pids(request, consumer_pid=str(message["consumerPid"]))
            # ``format`` is an IRI (``@type: @vocab``): the term DSP connectors send,
            # ``HttpData-PULL``, is a relative one, which expansion resolves against
            # pyld's default base; it is taken back here, and nothing else is served.
            sent = str(message["format"]).removeprefix(jsonld.DEFAULT_BASE_IRI)
            if sent != FORMAT:
                raise InvalidRequest(
                    f"format {sent!r} is not served: this connector serves "
                    f"{FORMAT!r} (the consumer pulls over HTTPS)"
                )
            if "dataAddress" in message:
                raise InvalidRequest(
                    f"a {FORMAT} request carries no dataAddress: the provider gives one"
                )
            callback = str(message["callbackAddress"])
            check_callback(callback, caller.participant, exchange.registered_host)
            agreement_id = str(message["agreementId"]).removeprefix(_AGREEMENT_PREFIX)
            if not agreement_id:
                raise InvalidRequest("agreementId names no agreement")
            now = side.now_ms()
            row = DspTransfer(
                transfer_id=new_transfer_id(),
                role=PROVIDER,
                counterparty=caller.participant,
                peer_pid=consumer_pid,
                callback=callback.rstrip("/"),
                request_digest=digest(caller, message),
                state=REQUESTED,
                token_expires_ms=now + side.token_seconds * 1000,
                created_ms=now,
                updated_ms=now,
            )
            if side.store.add(row) is None:  # the consumer's process id is taken
                held = side.store.by_peer(PROVIDER, caller.participant, consumer_pid)
                if held.request_digest != row.request_digest:
                    raise InvalidRequest(
                        f"consumerPid {message['consumerPid']} already names another transfer "
                        "request of yours: choose a new process id"
                    )
                return shown(held)  # a repeat: the same answer, nothing changed
            try:
                side.provider.start(caller, agreement_id, False, transfer_id=row.transfer_id)
            except BaseException:
                side.store.forget(row.transfer_id)  # refused: no process either
                raise
            n = side.negotiations.by_agreement(agreement_id)
            started = side.store.move(
                row.transfer_id,
                expect=frozenset({REQUESTED}),
                now_ms=now,
                state=STARTED,
                queue=[
                    (
                        f"dsp-start-{row.transfer_id}",
                        n.pid,
                        TRANSFER_METHOD + "Start",
                        {"transfer": row.transfer_id},
                    )
                ],
            )
            return shown(started)

        return exchange.answer("TransferProcess", await exchange.run(work), status=201)

    async def get_transfer(request: web.Request) -> web.Response:
        """``#transfers-get-provider`` and ``#transfers-get-consumer``."""
        pid = request.match_info["pid"]
        note_pids(request, provider_pid=pid)
        caller = exchange.caller(request)
        return exchange.answer(
            "TransferProcess", await exchange.run(lambda: shown(own(caller, pid)))
        )

    def provider_completion(
        caller: Caller, message: dict[str, Any], row: DspTransfer
    ) -> dict[str, Any]:
        receipt = message.get(SIGNED_RECEIPT)
        if row.state == COMPLETED:  # a repeat: the same answer, nothing changed
            t = side.transfers.get(row.transfer_id)
            return shown(row, **({SIGNED_RECEIPT: t.receipt} if t.receipt else {}))
        if row.state != STARTED:
            raise PreconditionFailed(
                f"the transfer process is {shown_state(side, row)}: it cannot complete"
            )
        extra: dict[str, Any] = {}
        if isinstance(receipt, str) and receipt:
            extra[SIGNED_RECEIPT] = side.provider.complete(caller, row.transfer_id, receipt)
        elif receipt is not None:
            raise InvalidRequest(f"{SIGNED_RECEIPT} must be the consumer's signed receipt (JWS)")
        else:
            side.provider.complete_unsigned(
                caller, row.transfer_id, "TransferCompletionMessage without a tds receipt"
            )
        done = side.store.move(
            row.transfer_id, expect=frozenset({STARTED}), now_ms=side.now_ms(), state=COMPLETED
        )
        return shown(done, **extra)

    # -- either side -------------------------------------------------------------------

    async def completion(request: web.Request) -> web.Response:
        """``#transfers-providerpid-completion-post`` (with the consumer's receipt, tds
        profile) and ``#transfers-consumerpid-completion-post``."""

        def act(caller: Caller, message: dict[str, Any], row: DspTransfer) -> dict[str, Any]:
            if row.role == PROVIDER:
                return provider_completion(caller, message, row)
            return consumer_side().completed(caller, message, row, shown)

        return await serve(request, "TransferCompletionMessage", act)

    async def termination(request: web.Request) -> web.Response:
        """``#transfers-providerpid-termination-post`` and
        ``#transfers-consumerpid-termination-post``."""

        def act(caller: Caller, message: dict[str, Any], row: DspTransfer) -> dict[str, Any]:
            if row.state == TERMINATED:
                return shown(row)  # a repeat: nothing changed
            if row.state == COMPLETED:
                raise PreconditionFailed("the transfer process is COMPLETED: it cannot terminate")
            reasons = [str(r)[:300] for r in message.get("reason", [])][:5]
            reason = "; ".join(reasons) or f"terminated by {caller.participant} over DSP"
            # The process first: its data address is refused from here on, and ending the
            # transfer under it then tells nobody (the peer asked).
            ended = side.store.move(
                row.transfer_id,
                expect=frozenset({REQUESTED, STARTED, SUSPENDED}),
                now_ms=side.now_ms(),
                state=TERMINATED,
            )
            if row.role == PROVIDER:
                t = side.transfers.get(row.transfer_id)
                if t.state in records.ACTIVE:
                    side.provider.terminate(row.transfer_id, reason, caller)
            else:
                consumer_side().terminated(row, reason)
            return shown(ended)

        return await serve(request, "TransferTerminationMessage", act)

    async def suspension(request: web.Request) -> web.Response:
        """``#transfers-providerpid-suspension-post`` and
        ``#transfers-consumerpid-suspension-post``: the data address is refused while
        suspended (the tds transfer stays started; nothing is metered again)."""

        def act(caller: Caller, message: dict[str, Any], row: DspTransfer) -> dict[str, Any]:
            if row.state == SUSPENDED:
                return shown(row)  # a repeat: nothing changed
            if shown_state(side, row) != STARTED:
                raise PreconditionFailed(
                    f"the transfer process is {shown_state(side, row)}: only a STARTED "
                    "process can be suspended"
                )
            peer = CONSUMER if row.role == PROVIDER else PROVIDER
            reasons = [str(r)[:300] for r in message.get("reason", [])][:5]
            return shown(
                side.store.move(
                    row.transfer_id,
                    expect=frozenset({STARTED}),
                    now_ms=side.now_ms(),
                    state=SUSPENDED,
                    suspended_by=peer,
                    log=paused_entry(
                        side,
                        row,
                        suspended=True,
                        by=peer,
                        reason="; ".join(reasons) or f"suspended by {caller.participant}",
                    ),
                )
            )

        return await serve(request, "TransferSuspensionMessage", act)

    async def start(request: web.Request) -> web.Response:
        """``#transfers-providerpid-start-post`` (the consumer resumes a suspended
        process) and ``#transfers-consumerpid-start-post`` (the provider's data address)."""

        def act(caller: Caller, message: dict[str, Any], row: DspTransfer) -> dict[str, Any]:
            if row.role == CONSUMER:
                return consumer_side().started(caller, message, row, shown)
            if row.state == STARTED:
                raise PreconditionFailed(
                    "the transfer process is STARTED already: a start message resumes a "
                    "SUSPENDED one"
                )
            if shown_state(side, row) != SUSPENDED:
                raise PreconditionFailed(
                    f"the transfer process is {shown_state(side, row)}: it cannot start again"
                )
            if row.suspended_by == PROVIDER:
                # The provider's suspension is its operator's decision: the consumer's
                # start message does not undo it (the provider resumes it).
                raise PreconditionFailed(
                    "the provider suspended the transfer process: only the provider resumes it"
                )
            return shown(
                side.store.move(
                    row.transfer_id,
                    expect=frozenset({SUSPENDED}),
                    now_ms=side.now_ms(),
                    state=STARTED,
                    suspended_by="",
                    log=paused_entry(side, row, suspended=False, by=CONSUMER),
                )
            )

        return await serve(request, "TransferStartMessage", act)

    def consumer_side() -> DspTransferConsumer:
        consumer = side.consumer()
        if consumer is None:
            raise NotFound("no such transfer process")
        return consumer

    from connector.dsp.dataplane import data_route

    return [
        web.post("/transfers/request", request_transfer),
        data_route(exchange, side),
        web.get("/transfers/{pid}", get_transfer),
        web.post("/transfers/{pid}/start", start),
        web.post("/transfers/{pid}/completion", completion),
        web.post("/transfers/{pid}/termination", termination),
        web.post("/transfers/{pid}/suspension", suspension),
    ]

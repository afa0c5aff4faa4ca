"""The consumer's side of compute-to-data: ask, check the answer against its receipt, countersign.

The provider's answer is believed only as far as its signed receipt says, and the receipt
only after it is checked against what this connector knows: the agreement (its id, parties,
product and the rules both signed), the question it asked (parsed here too, so the
canonical query in the receipt is the one asked) and the answer's bytes (their SHA-256).
Then the consumer countersigns and logs the receipt, and answers the asking user; the
countersignature goes back to the provider after that, off the answer's path.

The record, its log entry and the confirmation owed to the provider (a row of the outbox,
``connector.negotiation.outbox``) are one commit, synced before the answer is returned
(the asking user is told the receipt is in both logs, and a log entry is durable before
anyone hears of it, as a transfer's receipt is); the provider's copy of the receipt was
synced before it answered. The confirmation is stored leased to this process and handed
to its outbox once the answer has gone; the outbox retries it with backoff while the
provider cannot be reached. Because it is a row written with the computation, it
survives a restart, and replicas sharing a PostgreSQL database send it once (they claim
rows with ``SKIP LOCKED``, and a lease keeps the others off one being sent).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector import compute  # parse_query: sqlglot loads with the first question
from connector._proto.tds.v1 import compute_pb2, compute_pb2_grpc
from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.audit.log import AuditLog
from connector.clock import Clock
from connector.compute.receipt import (
    WHAT,
    ComputationReceipt,
    parse_computation_receipt,
)
from connector.compute.rules import agreed_rules
from connector.compute.service import question_of
from connector.compute.store import (
    ANSWERED,
    CONFIRMED,
    CONSUMER,
    Computation,
    ComputationStore,
    micro,
)
from connector.errors import (
    ConnectorError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    VerificationError,
)
from connector.identifiers import COMPUTATION_ID
from connector.negotiation.agreement import Agreement
from connector.negotiation.outbox import Pending, enqueue, mark_delivered
from connector.negotiation.service import PermanentRefusal
from connector.rpc.channel import calling
from connector.store.database import RawTransaction

if TYPE_CHECKING:
    from connector.compute.query import Query

__all__ = [
    "COMPUTE_TIMEOUT_SECONDS",
    "CONFIRM_METHOD",
    "ComputeConsumer",
    "SendConfirmation",
    "confirmation_id",
]

log = logging.getLogger(__name__)

COMPUTE_TIMEOUT_SECONDS = 120.0
"""How long the consumer waits for an answer (the provider's engine stops at its own limit)."""

CONFIRM_METHOD = "ConfirmComputation"
"""The outbox's method for a countersignature owed to a provider."""

CONFIRM_TIMEOUT_SECONDS = 15.0
"""How long one confirmation call may take: well within the lease (``lease_ms``) that
keeps other replicas off the row while it is sent."""

# The provider answered these for good: sending again changes nothing (until a restart).
_REFUSED = (NotFound, PermissionDenied, PreconditionFailed, VerificationError)

SendConfirmation = Callable[[str, compute_pb2.ConfirmComputationRequest], None]
"""Sends a confirmation to a provider (``ConfirmComputation``); raises what it answered."""

HandOver = Callable[[list[Pending]], None]
"""Sends committed outbox rows at once (the node's outbox, ``Outbox.dispatch``)."""


def confirmation_id(computation_id: str) -> str:
    """The outbox message id of a computation's confirmation: one row per computation."""
    return f"confirm-{computation_id}"


class ComputeConsumer:
    """Asks providers questions under this connector's agreements."""

    def __init__(
        self,
        *,
        participant: str,
        agreement_of: Callable[[str], Agreement],
        store: ComputationStore,
        audit: AuditLog,
        clock: Clock,
        signing_key: ed25519.Ed25519PrivateKey,
        keys: jws.KeyLookup,
        channel_to: Callable[[str], grpc.Channel],
        hand_over: HandOver | None = None,
        lease_ms: int = 30_000,
        send: SendConfirmation | None = None,
    ) -> None:
        """``agreement_of``: our finalized, unrevoked agreement as consumer, or an error;
        ``channel_to``: a channel to a member, kept by the caller (not closed here);
        ``hand_over``: sends a confirmation's committed row at once (without it, the row is
        due at once and the outbox's next pass sends it); ``lease_ms``: how long a row
        handed over is kept from other replicas' outboxes; ``send``: the call to the
        provider (``ConfirmComputation`` over ``channel_to`` unless given)."""
        self._me = participant
        self._agreement_of = agreement_of
        self._store = store
        self._audit = audit
        self._clock = clock
        self._key = signing_key
        self._keys = keys
        self._channel_to = channel_to
        self._hand_over = hand_over
        self._lease_ms = lease_ms
        self._send = send if send is not None else self._call_provider
        self._stopped = False

    def resume(self) -> int:
        """Queue again every confirmation not yet taken (at start); how many are owed.

        Each computation still ``answered`` gets its row: made if it has none (written
        before confirmations went through the outbox), due again if the outbox gave up on
        it (the provider refused it or stayed unreachable: a restart tries again, as an
        administrator would expect). On SQLite, where one process owns the database, a
        row leased to this process before it stopped is due at once; on PostgreSQL a
        lease may be a live replica's and is left to run out.
        """
        now_ms = int(self._clock.now() * 1000)
        owed = self._store.pending_confirmations()
        self._store.requeue_confirmations(
            [
                (confirmation_id(c.id), c.counterparty, self._payload(c.id, c.receipt or ""))
                for c in owed
            ],
            method=CONFIRM_METHOD,
            now_ms=now_ms,
        )
        return len(owed)

    def stop(self) -> None:
        """Hand no more confirmations to the outbox (those owed are in it, for the next
        start or another replica)."""
        self._stopped = True

    @staticmethod
    def _payload(computation_id: str, receipt: str) -> bytes:
        return compute_pb2.ConfirmComputationRequest(
            computation_id=computation_id, receipt=receipt
        ).SerializeToString()

    def ask(
        self,
        agreement_id: str,
        text: str,
        *,
        after: Callable[[Callable[[], None]], bool] | None = None,
    ) -> compute_pb2.ComputeResponse:
        """Ask the provider; the answer with the receipt countersigned by us, logged.

        ``after``: registers a callback to run once the answer has reached the asking user
        (``grpc.ServicerContext.add_callback``; false if it could not): the confirmation
        to the provider is owed then, so that sending it does not compete with the answer
        on its way. Without it, or if registering fails, it is owed at once.
        """
        if not agreement_id:
            raise InvalidRequest("agreement_id is required")
        question = question_of(text)
        agreement = self._agreement_of(agreement_id)
        provider = agreement.provider
        channel = self._channel_to(provider)
        # Parsed before asking (the receipt must name this question's canonical form); a
        # question we cannot parse is parsed again, and refused, by ``_check`` if the
        # provider answers it at all. Not beside the call: a call that returns a future
        # starts a thread to poll its channel (gRPC) each time, and handing the answer
        # over from it cost more than the parse it would hide.
        query: Query | None = None
        try:
            if agreement.compute is not None:
                query = compute.parse_query(question, agreed_rules(agreement.compute))
        except InvalidRequest:
            pass
        with calling(provider):
            response: compute_pb2.ComputeResponse = compute_pb2_grpc.ComputeServiceStub(
                channel
            ).Compute(
                compute_pb2.ComputeRequest(agreement_id=agreement_id, question=text),
                timeout=COMPUTE_TIMEOUT_SECONDS,
            )
        try:
            receipt, countersigned = self._check(agreement, question, response, query)
        except VerificationError as exc:
            self._audit.record(
                "compute.receipt_refused",
                parties=[provider],
                data={"agreement": agreement.id, "reason": str(exc)[:300]},
            )
            raise
        now_ms = int(self._clock.now() * 1000)
        queued = self.record_answered(
            Computation(
                id=receipt.computation,
                role=CONSUMER,
                agreement_id=agreement.id,
                product=agreement.product,
                counterparty=provider,
                state=ANSWERED,
                started_ms=now_ms,
                query_sha256=receipt.query_sha256,
                answer_sha256=receipt.answer_sha256,
                epsilon_micro=micro(receipt.epsilon_spent),
                receipt=countersigned,
                ended_ms=now_ms,
            )
        )

        def owe() -> None:
            if self._hand_over is not None and not self._stopped:
                self._hand_over(queued)

        if after is None or not after(owe):
            owe()
        return compute_pb2.ComputeResponse(
            computation_id=receipt.computation, answer=response.answer, receipt=countersigned
        )

    def record_answered(self, c: Computation) -> list[Pending]:
        """Record an answered computation (its receipt countersigned by us), its
        ``compute.receipt`` entry and the confirmation owed to its provider, in one
        commit synced before it returns (the receipt is then reported as in our log);
        the confirmation's outbox row, for ``hand_over``."""
        assert c.receipt is not None
        logged = {"computation": c.id, "agreement": c.agreement_id, "receipt": c.receipt}
        appended = self._audit.prepare([("compute.receipt", [c.counterparty], logged)])
        payload = self._payload(c.id, c.receipt)
        # Leased to this process when it sends the confirmation itself.
        due_ms = c.ended_ms + self._lease_ms if self._hand_over is not None else c.ended_ms
        queued: list[Pending] = []

        def write(tx: RawTransaction) -> None:
            queued.append(
                enqueue(
                    tx,
                    message_id=confirmation_id(c.id),
                    target=c.counterparty,
                    method=CONFIRM_METHOD,
                    payload=payload,
                    due_ms=due_ms,
                    now_ms=c.ended_ms,
                )
            )
            appended(tx)

        self._store.create(c, log=write)
        return queued

    def deliver(self, pending: Pending) -> bool | None:
        """Send one confirmation from the outbox; ``True`` when the computation is marked
        confirmed and the row delivered (one synced commit), ``None`` when there was
        nothing to send (confirmed already: the outbox settles the row).

        A refusal for good (``_REFUSED``) is ``PermanentRefusal``: the outbox stops
        retrying it; anything else is raised for the outbox to retry. Either way the
        computation says why it is still owed, for the administrator.
        """
        request = compute_pb2.ConfirmComputationRequest.FromString(pending.payload)
        c = self._store.get(request.computation_id)
        if c.state != ANSWERED:
            return None  # confirmed already (a replica, or a repeat)
        try:
            self._send(pending.target, request)
        except ConnectorError as exc:
            with contextlib.suppress(PreconditionFailed):  # a replica confirmed it meanwhile
                self._store.update(c.id, expect=ANSWERED, reason=f"not yet confirmed: {exc}")
            if isinstance(exc, _REFUSED):
                log.error(
                    "the provider refused a computation's countersignature",
                    extra={"computation": c.id, "reason": str(exc)},
                )
                raise PermanentRefusal(str(exc)) from None
            raise
        try:
            self._store.update(
                c.id,
                expect=ANSWERED,
                log=lambda tx: mark_delivered(tx, pending.id),
                state=CONFIRMED,
                reason="",
            )
        except PreconditionFailed:
            return None  # a replica's send was taken first
        return True

    def gave_up(self, pending: Pending, reason: str) -> None:
        """The outbox stopped sending a confirmation: it is owed again at the next start."""
        log.error(
            "computation receipt not confirmed; retried at the next start",
            extra={"target": pending.target, "reason": reason},
        )

    def _call_provider(self, provider: str, request: compute_pb2.ConfirmComputationRequest) -> None:
        channel = self._channel_to(provider)
        with calling(provider):
            compute_pb2_grpc.ComputeServiceStub(channel).ConfirmComputation(
                request, timeout=CONFIRM_TIMEOUT_SECONDS
            )

    def _check(
        self,
        agreement: Agreement,
        question: str | dict[str, Any],
        r: compute_pb2.ComputeResponse,
        query: Query | None = None,
    ) -> tuple[ComputationReceipt, str]:
        """The provider's receipt, verified and matched to what we asked and received, and
        the receipt countersigned by us (``jws.countersign`` verifies the provider's
        signature first: one verification, not one here and one to countersign).
        ``query``: ``question`` as already parsed under the agreement's rules."""
        if agreement.compute is None:
            raise VerificationError(
                f"the provider answered under agreement {agreement.id}, which has no compute rules"
            )
        countersigned = jws.countersign(
            r.receipt,
            self._key,
            self._keys,
            first=(agreement.provider, "provider"),
            second=(self._me, "consumer"),
            what=WHAT,
        )
        receipt = parse_computation_receipt(r.receipt)
        # The provider names the computation; the id becomes our record's key and goes
        # into our log, so it must be one of the grammar before anything else uses it.
        COMPUTATION_ID.check(r.computation_id, error=VerificationError)
        rules = agreed_rules(agreement.compute)
        if query is None:
            query = compute.parse_query(question, rules)
        try:
            document = json.loads(r.answer)
        except ValueError:
            raise VerificationError("the provider's answer is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
            raise VerificationError("the provider's answer has no rows")
        limit = rules.privacy.epsilon_per_query if rules.privacy else 0.0
        problems = [
            (receipt.agreement != agreement.id, "names another agreement"),
            (receipt.computation != r.computation_id, "names another computation"),
            (receipt.product != agreement.product, "names another product"),
            (receipt.provider != agreement.provider, "names another provider"),
            (receipt.consumer != self._me, "names another consumer"),
            (receipt.rules_sha256 != rules.sha256(), "names rules the agreement does not hold"),
            (receipt.query != query.canonical_text(), "answers another question"),
            (receipt.query_sha256 != query.sha256(), "has a wrong query hash"),
            (
                receipt.answer_sha256 != hashlib.sha256(r.answer).hexdigest(),
                "does not match the answer received (SHA-256)",
            ),
            (canonical_json(document) != r.answer, "comes with an answer not in canonical form"),
            (receipt.rows != len(document["rows"]), "counts other rows than the answer has"),
            (receipt.suppressed != document.get("suppressed"), "counts other suppressed groups"),
            (receipt.epsilon_spent > limit, f"spent more ε than the {limit:g} a question may"),
        ]
        for bad, what in problems:
            if bad:
                raise VerificationError(f"the provider's computation receipt {what}")
        return receipt, countersigned

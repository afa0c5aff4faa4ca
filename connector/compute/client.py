"""The consumer's side of compute-to-data: ask, check the answer against its receipt, countersign.

The provider's answer is believed only as far as its signed receipt says, and the receipt
only after it is checked against what this connector knows: the agreement (its id, parties,
product and the rules both signed), the question it asked (parsed here too, so the
canonical query in the receipt is the one asked) and the answer's bytes (their SHA-256).
Then the consumer countersigns and logs the receipt, and answers the asking user; the
countersignature goes back to the provider after that, off the answer's path.

The record and its log entry are one commit, synced before the answer is returned (the
asking user is told the receipt is in both logs, and a log entry is durable before anyone
hears of it, as a transfer's receipt is); the provider's copy of the receipt was synced
before it answered. Every computation still ``answered`` here is a confirmation owed: sent
in the background, retried with backoff while the provider is unreachable, and again after
a restart.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import compute_pb2, compute_pb2_grpc
from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.audit.log import AuditLog
from connector.clock import Clock
from connector.compute.query import parse_query
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
from connector.rpc.channel import calling

__all__ = ["COMPUTE_TIMEOUT_SECONDS", "ComputeConsumer", "Confirmations"]

log = logging.getLogger(__name__)

COMPUTE_TIMEOUT_SECONDS = 120.0
"""How long the consumer waits for an answer (the provider's engine stops at its own limit)."""

# The provider answered these for good: sending again changes nothing (until a restart).
_REFUSED = (NotFound, PermissionDenied, PreconditionFailed, VerificationError)


class Confirmations:
    """Sends countersignatures owed to providers, in the background, until they are taken.

    ``send(computation_id)`` is the whole job: it raises what the provider answered. A
    refusal for good (``_REFUSED``) is logged and not retried; anything else (the provider
    unreachable, a timeout) is retried after ``base_delay`` doubling up to ``max_delay``,
    ``max_attempts`` times in all. What is still owed when the process stops is owed at the
    next start (the store says so: the computation is still ``answered``).
    """

    def __init__(
        self,
        send: Callable[[str], None],
        *,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        max_attempts: int = 12,
    ) -> None:
        self._send = send
        self._base, self._max_delay, self._max_attempts = base_delay, max_delay, max_attempts
        self._due: list[tuple[float, str, int]] = []  # (when, computation, attempts so far)
        self._queued: set[str] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._sending = False
        self._thread: threading.Thread | None = None

    def owe(self, computation_id: str) -> None:
        """Send this confirmation as soon as possible (once, however often it is owed)."""
        self._schedule(computation_id, 0, 0.0)

    def _schedule(self, computation_id: str, attempts: int, delay: float) -> None:
        with self._cond:
            if self._stopped or computation_id in self._queued:
                return
            self._queued.add(computation_id)
            heapq.heappush(self._due, (time.monotonic() + delay, computation_id, attempts))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tds-compute-confirm", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _next(self) -> tuple[str, int] | None:
        with self._cond:
            while not self._stopped:
                if self._due and self._due[0][0] <= time.monotonic():
                    _, computation_id, attempts = heapq.heappop(self._due)
                    self._queued.discard(computation_id)
                    self._sending = True
                    return computation_id, attempts
                self._sending = False
                self._cond.notify_all()  # for ``settled``
                self._cond.wait(self._due[0][0] - time.monotonic() if self._due else None)
            return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            computation_id, attempts = job
            try:
                self._send(computation_id)
            except _REFUSED as exc:
                log.error(
                    "the provider refused a computation's countersignature",
                    extra={"computation": computation_id, "reason": str(exc)},
                )
            except Exception as exc:  # unreachable, or anything else: try again later
                attempts += 1
                if attempts >= self._max_attempts:
                    log.error(
                        "computation receipt not confirmed; retried at the next start",
                        extra={"computation": computation_id, "reason": str(exc)},
                    )
                    continue
                delay = min(self._base * 2 ** (attempts - 1), self._max_delay)
                self._schedule(computation_id, attempts, delay)

    def settled(self, timeout: float) -> bool:
        """Wait until nothing is being sent or due now (retries later do not count);
        whether that happened within ``timeout`` seconds. For tests and benchmarks."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._sending or (self._due and self._due[0][0] <= time.monotonic()):
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped:
                    return False
                self._cond.wait(left)
            return True

    def pending(self) -> int:
        """Confirmations waiting for their turn (not counting one being sent)."""
        with self._cond:
            return len(self._due)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending (what is owed stays owed in the store)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)


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
    ) -> None:
        """``agreement_of``: our finalized, unrevoked agreement as consumer, or an error;
        ``channel_to``: a channel to a member, kept by the caller (not closed here)."""
        self._me = participant
        self._agreement_of = agreement_of
        self._store = store
        self._audit = audit
        self._clock = clock
        self._key = signing_key
        self._keys = keys
        self._channel_to = channel_to
        self.confirmations = Confirmations(self.confirm)

    def resume(self) -> int:
        """Owe again every confirmation not yet taken (at start); how many."""
        pending = self._store.pending_confirmations()
        for c in pending:
            self.confirmations.owe(c.id)
        return len(pending)

    def stop(self) -> None:
        """Stop sending confirmations (those owed are sent after the next start)."""
        self.confirmations.stop()

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
        with calling(provider):
            response: compute_pb2.ComputeResponse = compute_pb2_grpc.ComputeServiceStub(
                channel
            ).Compute(
                compute_pb2.ComputeRequest(agreement_id=agreement_id, question=text),
                timeout=COMPUTE_TIMEOUT_SECONDS,
            )
        try:
            receipt, countersigned = self._check(agreement, question, response)
        except VerificationError as exc:
            self._audit.record(
                "compute.receipt_refused",
                parties=[provider],
                data={"agreement": agreement.id, "reason": str(exc)[:300]},
            )
            raise
        now_ms = int(self._clock.now() * 1000)
        logged = {
            "computation": receipt.computation,
            "agreement": agreement.id,
            "receipt": countersigned,
        }
        self._store.create(
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
            ),
            # Synced before the answer is returned: the receipt is reported as in our log.
            log=self._audit.prepare([("compute.receipt", [provider], logged)]),
        )
        computation = receipt.computation

        def owe() -> None:
            self.confirmations.owe(computation)

        if after is None or not after(owe):
            owe()
        return compute_pb2.ComputeResponse(
            computation_id=receipt.computation, answer=response.answer, receipt=countersigned
        )

    def confirm(self, computation_id: str) -> None:
        """Send the countersignature of an answered computation to its provider, then
        mark it confirmed (a synced commit).

        Raises what the provider answered; a failure leaves it owed, and says why.
        """
        c = self._store.get(computation_id)
        if c.state != ANSWERED or c.receipt is None:
            return  # confirmed already (a repeat), or nothing to confirm
        try:
            channel = self._channel_to(c.counterparty)
            with calling(c.counterparty):
                compute_pb2_grpc.ComputeServiceStub(channel).ConfirmComputation(
                    compute_pb2.ConfirmComputationRequest(
                        computation_id=computation_id, receipt=c.receipt
                    ),
                    timeout=30,
                )
        except ConnectorError as exc:
            # Why it is still owed, for the administrator.
            self._store.update(computation_id, expect=ANSWERED, reason=f"not yet confirmed: {exc}")
            raise
        self._store.update(computation_id, expect=ANSWERED, state=CONFIRMED, reason="")

    def _check(
        self, agreement: Agreement, question: str | dict[str, Any], r: compute_pb2.ComputeResponse
    ) -> tuple[ComputationReceipt, str]:
        """The provider's receipt, verified and matched to what we asked and received, and
        the receipt countersigned by us (``jws.countersign`` verifies the provider's
        signature first: one verification, not one here and one to countersign)."""
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
        query = parse_query(question, rules)
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

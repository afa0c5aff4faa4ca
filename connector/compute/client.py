"""The consumer's side of compute-to-data: ask, check the answer against its receipt, countersign.

The provider's answer is believed only as far as its signed receipt says, and the receipt
only after it is checked against what this connector knows: the agreement (its id, parties,
product and the rules both signed), the question it asked (parsed here too, so the
canonical query in the receipt is the one asked) and the answer's bytes (their SHA-256).
Then the consumer countersigns, logs the receipt and sends the countersignature back.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
    countersign_computation,
    parse_computation_receipt,
)
from connector.compute.rules import parse_rules
from connector.compute.service import question_of
from connector.compute.store import (
    ANSWERED,
    CONFIRMED,
    CONSUMER,
    Computation,
    ComputationStore,
    micro,
)
from connector.errors import ConnectorError, InvalidRequest, VerificationError
from connector.negotiation.agreement import Agreement
from connector.rpc.channel import calling

__all__ = ["COMPUTE_TIMEOUT_SECONDS", "ComputeConsumer"]

log = logging.getLogger(__name__)

COMPUTE_TIMEOUT_SECONDS = 120.0
"""How long the consumer waits for an answer (the provider's engine stops at its own limit)."""


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
        """``agreement_of``: our finalized, unrevoked agreement as consumer, or an error."""
        self._me = participant
        self._agreement_of = agreement_of
        self._store = store
        self._audit = audit
        self._clock = clock
        self._key = signing_key
        self._keys = keys
        self._channel_to = channel_to

    def ask(self, agreement_id: str, text: str) -> compute_pb2.ComputeResponse:
        """Ask the provider; the answer with the receipt countersigned by us, logged."""
        if not agreement_id:
            raise InvalidRequest("agreement_id is required")
        question = question_of(text)
        agreement = self._agreement_of(agreement_id)
        provider = agreement.provider
        channel = self._channel_to(provider)
        try:
            with calling(provider):
                response: compute_pb2.ComputeResponse = compute_pb2_grpc.ComputeServiceStub(
                    channel
                ).Compute(
                    compute_pb2.ComputeRequest(agreement_id=agreement_id, question=text),
                    timeout=COMPUTE_TIMEOUT_SECONDS,
                )
        finally:
            channel.close()
        try:
            receipt = self._check(agreement, question, response)
        except VerificationError as exc:
            self._audit.record(
                "compute.receipt_refused",
                parties=[provider],
                data={"agreement": agreement.id, "reason": str(exc)[:300]},
            )
            raise
        countersigned = countersign_computation(response.receipt, self._key, self._keys)
        now_ms = int(self._clock.now() * 1000)
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
            )
        )
        self._audit.record(
            "compute.receipt",
            parties=[provider],
            data={
                "computation": receipt.computation,
                "agreement": agreement.id,
                "receipt": countersigned,
            },
        )
        self._confirm(provider, receipt.computation, countersigned)
        return compute_pb2.ComputeResponse(
            computation_id=receipt.computation, answer=response.answer, receipt=countersigned
        )

    def _confirm(self, provider: str, computation_id: str, countersigned: str) -> None:
        """Send the countersignature; the answer is ours either way (a failure here leaves
        the provider's copy unconfirmed, which reconciliation shows)."""
        try:
            channel = self._channel_to(provider)
            try:
                with calling(provider):
                    compute_pb2_grpc.ComputeServiceStub(channel).ConfirmComputation(
                        compute_pb2.ConfirmComputationRequest(
                            computation_id=computation_id, receipt=countersigned
                        ),
                        timeout=30,
                    )
            finally:
                channel.close()
        except ConnectorError as exc:
            log.warning(
                "computation receipt not confirmed to the provider",
                extra={"computation": computation_id, "reason": str(exc)},
            )
            return
        self._store.update(computation_id, expect=ANSWERED, state=CONFIRMED)

    def _check(
        self, agreement: Agreement, question: str | dict[str, Any], r: compute_pb2.ComputeResponse
    ) -> ComputationReceipt:
        """The provider's receipt, verified and matched to what we asked and received."""
        if agreement.compute is None:
            raise VerificationError(
                f"the provider answered under agreement {agreement.id}, which has no compute rules"
            )
        jws.verify_signed(r.receipt, self._keys, first=(agreement.provider, "provider"), what=WHAT)
        receipt = parse_computation_receipt(r.receipt)
        rules = parse_rules(agreement.compute)
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
        return receipt

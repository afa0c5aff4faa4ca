"""The provider's side of compute-to-data (可用不可见), and ``ComputeService``.

One question under an agreement: check it against the agreement's rules, let the usage
policy decide it (``compute.run``), reserve its ε in the agreement's metering row, compute
where the data lives, apply disclosure control, sign a computation receipt and log it.
Anything that fails after the reservation gives the ε back. The consumer countersigns the
receipt (``ConfirmComputation``); both logs then hold the same countersigned receipt.

The decision and the reservation run on another thread while the engine computes (the
engine spends most of its time outside Python): the answer is computed before it is known
whether it may be given, and leaves only once the decision allowed it and its ε is
reserved; otherwise it is dropped, and the refusal is what the consumer hears. A question
whose refusal is known beforehand (no rules to answer it under, a revoked agreement, a
budget already too small for it) does not start the engine.

Durable writes on the answer's path: two commits and one sync. The decision's log entry,
the ε reservation and the computation record are one transaction, committed before the
answer is signed (atomic: concurrent questions, also from replicas, see the spend) but not
waited for on the disk; the signed receipt's log entry and the state ``answered`` are the
next, synced before the answer leaves, and that sync covers the first (a commit is durable
only with every commit before it). A process that dies in between leaves the computation
``reserved`` with its ε spent (never given back blindly: a replica may still be computing
it) or, if the machine went down before any sync, no trace at all, and no answer either.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector import compute  # parse_query: sqlglot loads with the first question
from connector._proto.tds.v1 import compute_pb2, compute_pb2_grpc
from connector.audit import jws
from connector.audit.log import AuditLog, Record
from connector.catalog.catalog import Catalog
from connector.catalog.products import Offer, Product
from connector.clock import Clock
from connector.compute.receipt import (
    WHAT,
    ComputationReceipt,
    sign_computation,
)
from connector.compute.rules import ComputeRules, agreed_rules
from connector.compute.sources import ComputeSources
from connector.compute.store import (
    ANSWERED,
    CONFIRMED,
    PROVIDER,
    RESERVED,
    Computation,
    ComputationStore,
    EpsilonUse,
    micro,
)
from connector.consent.register import ConsentLookup, no_consent
from connector.errors import (
    ConnectorError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
    VerificationError,
)
from connector.identifiers import COMPUTATION_ID
from connector.negotiation.agreement import Agreement
from connector.policy.inputs import build_input
from connector.policy.point import PolicyPoint
from connector.rpc.auth import Access, Caller, current_caller
from connector.rpc.server import Service
from connector.transfer.provider import TransferProvider

if TYPE_CHECKING:
    from connector.compute.answer import Answer
    from connector.compute.client import ComputeConsumer
    from connector.compute.query import Query

__all__ = [
    "MAX_QUESTION_BYTES",
    "ComputeProvider",
    "ComputeServicer",
    "compute_service",
    "question_of",
]

MAX_QUESTION_BYTES = 16 * 1024
"""The longest question (SQL or JSON) accepted: a real aggregate query is a few hundred."""


def question_of(text: str) -> str | dict[str, Any]:
    """A question as sent: the JSON form when it is a JSON object, else SQL text."""
    if len(text.encode()) > MAX_QUESTION_BYTES:
        raise InvalidRequest(
            f"the question is {len(text.encode())} bytes; at most {MAX_QUESTION_BYTES} are accepted"
        )
    if not text.strip():
        raise InvalidRequest("the question is empty: send one SELECT … FROM product or its JSON")
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidRequest(f"the question is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidRequest("a JSON question is an object")
        return value
    return text


@dataclass(frozen=True)
class _Asked:
    """One question as the provider has it before deciding: who asks, under what."""

    caller: Caller
    agreement: Agreement
    revoked: bool
    product: Product
    offer: Offer
    rules: ComputeRules | None
    query: Query | None

    @property
    def rules_in_force(self) -> ComputeRules:
        """The rules, for a question that has them (one the policy may allow)."""
        assert self.rules is not None
        return self.rules

    def over_budget(self, used: EpsilonUse) -> bool:
        """Whether the ε this question asks would exceed the budget as used so far (the
        policy refuses it; the reservation would too)."""
        privacy = self.rules.privacy if self.rules is not None else None
        if privacy is None:
            return False
        return used.spent_micro + micro(privacy.epsilon_per_query) > micro(privacy.epsilon_budget)


class ComputeProvider:
    """Answers questions about this connector's products under its agreements."""

    def __init__(
        self,
        *,
        participant: str,
        transfers: TransferProvider,
        catalog: Catalog,
        policy: PolicyPoint,
        store: ComputationStore,
        sources: ComputeSources,
        audit: AuditLog,
        clock: Clock,
        signing_key: ed25519.Ed25519PrivateKey,
        keys: jws.KeyLookup,
        consent: ConsentLookup = no_consent,
    ) -> None:
        self._me = participant
        self._transfers = transfers
        self._catalog = catalog
        self._policy = policy
        self._store = store
        self._sources = sources
        self._audit = audit
        self._clock = clock
        self._key = signing_key
        self._keys = keys
        self._consent = consent
        # The usage decisions and reservations made beside the engine (``compute``).
        self._beside = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tds-compute-decide")

    def close(self) -> None:
        """Stop the threads beside the engine once the server has stopped taking calls
        (the connector's ``stop``): a stopped node leaves no idle decision threads."""
        self._beside.shutdown(wait=False, cancel_futures=True)

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    def _refuse(
        self, caller: Caller, agreement: Agreement, reason: str, decided: Sequence[Record] = ()
    ) -> None:
        """Log a refusal, after the decision that led to it (in one write)."""
        refused: Record = (
            "compute.refused",
            [caller.participant],
            {"agreement": agreement.id, "product": agreement.product, "reason": reason[:300]},
        )
        self._audit.record_many([*decided, refused])

    def compute(self, caller: Caller, agreement_id: str, text: str) -> compute_pb2.ComputeResponse:
        """Answer one question; see the module docstring for the steps."""
        if not agreement_id:
            raise InvalidRequest("agreement_id is required")
        question = question_of(text)
        agreement, revoked = self._transfers.agreement_for(caller, agreement_id, "compute.run")
        published = self._catalog.published(agreement.product, agreement.offer)
        if published is None:
            raise PreconditionFailed(
                f"product {agreement.product!r} or its offer has been withdrawn by the provider"
            )
        product, offer = published
        # The rules the consumer signed, not the offer as it may read today.
        rules = agreed_rules(agreement.compute) if agreement.compute is not None else None
        query: Query | None = None
        if rules is not None and "compute" in agreement.delivery:
            try:
                query = compute.parse_query(question, rules)
            except InvalidRequest as exc:
                self._refuse(caller, agreement, f"question refused: {exc}")
                raise
        ask = _Asked(caller, agreement, revoked, product, offer, rules, query)
        used = self._store.usage(agreement.id)
        if query is None or revoked or ask.over_budget(used):
            # The policy refuses these: decide first, and let the engine not start.
            return self._sequential(ask, used)
        try:
            executor, source_state = self._sources.open(product.source, product.fields)
        except BaseException as exc:
            return self._sequential(ask, used, opened=exc)
        # The usage decision and the ε reservation run beside the engine: the answer is
        # computed before it is known whether it may be given, and given only if it may
        # (refused or not reserved: it is dropped, and nothing is spent).
        decided = self._beside.submit(
            contextvars.copy_context().run, self._decide_and_reserve, ask, used, None
        )
        from connector.compute.answer import answer_query  # loads the engine (see sources)

        failure: BaseException | None = None
        try:
            answer: Answer | None = answer_query(query, ask.rules_in_force, executor)
        except BaseException as exc:
            answer, failure = None, exc
        c, after = decided.result()  # a refusal is raised here, and logged already
        return self._answered(ask, c, after, answer, failure, source_state)

    def _sequential(
        self, ask: _Asked, used: EpsilonUse, opened: BaseException | None = None
    ) -> compute_pb2.ComputeResponse:
        """Decide, reserve, then compute: for a question the policy will refuse (the
        engine does not start) or whose source did not open (``opened``, raised once the
        decision allows: a refusal goes first, as the policy is asked first)."""
        c, after = self._decide_and_reserve(ask, used, opened)
        assert ask.query is not None  # the policy refuses otherwise
        failure: BaseException | None = None
        answer: Answer | None = None
        source_state = ""
        try:
            from connector.compute.answer import answer_query

            executor, source_state = self._sources.open(ask.product.source, ask.product.fields)
            answer = answer_query(ask.query, ask.rules_in_force, executor)
        except BaseException as exc:
            failure = exc
        return self._answered(ask, c, after, answer, failure, source_state)

    def _decide_and_reserve(
        self, ask: _Asked, used: EpsilonUse, opened: BaseException | None
    ) -> tuple[Computation, EpsilonUse]:
        """The usage decision (``compute.run``) and, if it allows, the ε reservation with
        the computation's record, the decision's entry in the same commit; or the refusal,
        logged, raised. ``opened``: the source failed to open (raised once allowed, the
        decision logged, nothing spent)."""
        caller, agreement, rules, query = ask.caller, ask.agreement, ask.rules, ask.query
        epsilon = rules.privacy.epsilon_per_query if rules and rules.privacy else 0.0
        budget = micro(rules.privacy.epsilon_budget) if rules and rules.privacy else 0
        left = max(0, budget - used.spent_micro) / 1_000_000
        document = build_input(
            "compute.run",
            caller=caller,
            resource=ask.product.resource(),
            clock=self._clock,
            offer={"id": ask.offer.id, "policy_module": ask.offer.policy_module},
            contract={
                "id": agreement.id,
                "purpose": agreement.purpose,
                "valid_from_ns": agreement.valid_from_ns,
                "valid_until_ns": agreement.valid_until_ns,
                "max_transfers": agreement.max_transfers,
                "max_bytes": agreement.max_bytes,
                "revoked": ask.revoked,
                "obligations": dict(agreement.obligations),
                "delivery": list(agreement.delivery),
                "compute": dict(agreement.compute or {}),
            },
            context={
                "revoked": ask.revoked,
                "epsilon_spent": used.spent,
                "epsilon_left": left,
                "computations_used": used.computations,
                "consent": dict(
                    self._consent(caller.participant, ask.product.id, agreement.purpose)
                ),
            },
            query=(
                query.shape(rules)
                if query is not None and rules is not None
                else {
                    "dimensions": [],
                    "filtered": [],
                    "measures": [],
                    "aggregates": [],
                    "epsilon": 0.0,
                }
            ),
        )
        # The decision's entry goes with what it leads to: the reservation, or the refusal.
        decided: list[Record] = []
        try:
            decision = self._policy.decide(document, defer=decided)
        except Unavailable:
            self._audit.record_many(decided)  # the engine was down: logged, nothing decided
            raise
        if not decision.allow:
            reason = "computation refused by the usage policy: " + ", ".join(decision.deny)
            if "privacy_budget_exhausted" in decision.deny:
                reason += f" (ε {used.spent:g} spent, {left:g} left, {epsilon:g} asked)"
            self._refuse(caller, agreement, reason, decided)
            raise PermissionDenied(reason)
        assert rules is not None and query is not None  # the policy refuses otherwise
        if opened is not None:
            self._audit.record_many(decided)  # decided, then nothing spent
            raise opened
        c = Computation(
            id=f"cp-{uuid.uuid4().hex}",
            role=PROVIDER,
            agreement_id=agreement.id,
            product=ask.product.id,
            counterparty=caller.participant,
            state=RESERVED,
            started_ms=self._now_ms(),
            query_sha256=query.sha256(),
            epsilon_micro=micro(epsilon),
        )
        try:
            after = self._store.reserve(
                c,
                budget_micro=budget,
                now_ms=c.started_ms,
                log=self._audit.prepare(decided),  # built before the write lock
                durable=False,  # the receipt's sync, before the answer leaves, covers it
            )
        except PermissionDenied as exc:
            self._refuse(caller, agreement, str(exc), decided)
            raise
        except Exception:
            # Nothing reserved (the store failed, and the decision's entry with it): the
            # decision is still logged if the log can be written at all.
            with contextlib.suppress(ConnectorError):
                self._audit.record_many(decided)
            raise
        return c, after

    def _answered(
        self,
        ask: _Asked,
        c: Computation,
        after: EpsilonUse,
        answer: Answer | None,
        failure: BaseException | None,
        source_state: str,
    ) -> compute_pb2.ComputeResponse:
        """The receipt for a reserved computation's answer, or, if it failed, its ε given
        back and the failure logged and raised."""
        try:
            if failure is not None:
                raise failure
            assert answer is not None
            return self._receipt(ask, c, after, answer, source_state)
        except BaseException as exc:
            self._store.release(c.id, f"no answer: {exc}", self._now_ms())
            if isinstance(exc, ConnectorError):
                self._audit.record(
                    "compute.failed",
                    parties=[ask.caller.participant],
                    data={
                        "computation": c.id,
                        "agreement": ask.agreement.id,
                        "reason": str(exc)[:300],
                    },
                )
            raise

    def _receipt(
        self, ask: _Asked, c: Computation, after: EpsilonUse, answer: Answer, source_state: str
    ) -> compute_pb2.ComputeResponse:
        caller, agreement = ask.caller, ask.agreement
        fields = answer.receipt(source_state)
        receipt = ComputationReceipt(
            agreement=agreement.id,
            computation=c.id,
            product=agreement.product,
            provider=self._me,
            consumer=caller.participant,
            query=fields["query"],
            query_sha256=fields["query_sha256"],
            rules_sha256=fields["rules_sha256"],
            source_state=source_state,
            answer_sha256=fields["answer_sha256"],
            rows=fields["rows"],
            suppressed=fields["suppressed"],
            epsilon_spent=fields["epsilon_spent"],
            epsilon_left=after.left,
            delta=fields["delta"],
            computed_ms=self._now_ms(),
        )
        signed = sign_computation(receipt, self._key)
        answered: Record = (
            "compute.answered",
            [caller.participant],
            {"computation": c.id, "agreement": agreement.id, "receipt": signed},
        )
        self._store.update(  # synced: the reservation's commit with it
            c.id,
            expect=RESERVED,
            log=self._audit.prepare([answered]),
            state=ANSWERED,
            receipt=signed,
            answer_sha256=receipt.answer_sha256,
            ended_ms=receipt.computed_ms,
        )
        return compute_pb2.ComputeResponse(
            computation_id=c.id, answer=answer.canonical(), receipt=signed
        )

    def confirm(self, caller: Caller, computation_id: str, countersigned: str) -> None:
        """Take the consumer's countersignature of a receipt we sent; log it."""
        COMPUTATION_ID.check(computation_id)
        try:
            c = self._store.get(computation_id)
        except NotFound:
            raise NotFound(f"no computation {computation_id!r} with you") from None
        if c.role != PROVIDER or c.counterparty != caller.participant or c.receipt is None:
            raise NotFound(f"no computation {computation_id!r} with you")
        if c.state == CONFIRMED:
            if c.receipt == countersigned:
                return  # the consumer retried: same answer
            raise PreconditionFailed(f"computation {c.id} is already confirmed")
        if c.state != ANSWERED:
            raise PreconditionFailed(f"computation {c.id} is {c.state}")
        try:
            jws.verify_countersignature(
                countersigned,
                c.receipt,
                self._keys,
                first=(self._me, "provider"),
                second=(caller.participant, "consumer"),
                what=WHAT,
            )
        except VerificationError:
            self._audit.record(
                "compute.receipt_refused",
                parties=[caller.participant],
                data={"computation": c.id, "agreement": c.agreement_id},
            )
            raise
        logged: Record = (
            "compute.receipt",
            [caller.participant],
            {"computation": c.id, "agreement": c.agreement_id, "receipt": countersigned},
        )
        self._store.update(
            c.id,
            expect=ANSWERED,
            log=self._audit.prepare([logged]),
            state=CONFIRMED,
            receipt=countersigned,
        )


class ComputeServicer(compute_pb2_grpc.ComputeServiceServicer):
    """The provider's endpoints, and ``Ask`` for this connector's own administrator."""

    def __init__(self, provider: ComputeProvider, consumer: ComputeConsumer) -> None:
        self._provider = provider
        self._consumer = consumer

    def Compute(
        self, request: compute_pb2.ComputeRequest, context: Any
    ) -> compute_pb2.ComputeResponse:
        """Consumer → provider."""
        return self._provider.compute(current_caller(), request.agreement_id, request.question)

    def ConfirmComputation(
        self, request: compute_pb2.ConfirmComputationRequest, context: Any
    ) -> compute_pb2.ConfirmComputationResponse:
        """Consumer → provider."""
        self._provider.confirm(current_caller(), request.computation_id, request.receipt)
        return compute_pb2.ConfirmComputationResponse()

    def Ask(self, request: compute_pb2.ComputeRequest, context: Any) -> compute_pb2.ComputeResponse:
        """Admin → its own connector, as consumer; the countersignature goes to the provider
        once the answer is sent."""
        return self._consumer.ask(
            request.agreement_id, request.question, after=context.add_callback
        )


def compute_service(servicer: ComputeServicer) -> Service:
    """``ComputeService`` with its access table."""
    return Service(
        "tds.v1.ComputeService",
        compute_pb2_grpc.add_ComputeServiceServicer_to_server,
        servicer,
        {
            "Compute": Access.MEMBER,
            "ConfirmComputation": Access.MEMBER,
            "Ask": Access.ADMIN,
        },
    )

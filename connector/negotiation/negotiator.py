"""Both roles of contract negotiation, over the store, the outbox and the policy point.

Provider: a request is checked against the contract policy; denied → TERMINATED at once
(the reasons go back in the answer); allowed → the provider signs an agreement (AGREED)
and returns it in the answer, unless the policy says ``needs_approval``, in which case
the negotiation waits in REQUESTED for the admin, whose approval sends the agreement in a
SendAgreement call back. Consumer: a received agreement is verified against what was
asked for and the provider's directory key, countersigned (VERIFIED) and sent back; the
provider verifies the countersignature, finalizes, and answers FINALIZED, which
finalizes the consumer's side.

Counter-offers (DSP 2025-1: REQUESTED → OFFERED ⇄ REQUESTED, OFFERED → ACCEPTED → AGREED):
the provider's admin may answer a waiting request with other terms — another published
offer of the product and a purpose — which the contract policy must allow for the
requester; the consumer's admin accepts them (the provider then decides again and agrees
at once: its admin's offer was the approval) or answers with a counter-request, which the
contract policy decides like a first request. The terms on the table are the
negotiation's ``offer`` and ``purpose``; the agreement is signed over the ones accepted.

Every transition is written to the audit log in the transaction that stores it, before
it is acknowledged.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import negotiation_pb2
from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.audit.log import AuditLog, Record
from connector.catalog.catalog import Catalog
from connector.catalog.products import Offer, Product
from connector.clock import Clock
from connector.consent.register import ConsentLookup, no_consent
from connector.errors import (
    Aborted,
    AuthenticationError,
    ConflictError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
    VerificationError,
)
from connector.identifiers import LABEL_ID, PROCESS_ID
from connector.negotiation.agreement import (
    Agreement,
    ParsedAgreement,
    countersigned_agreement,
    sign_agreement,
    verify_returned_agreement,
)
from connector.negotiation.history import TRANSITION_KIND
from connector.negotiation.states import FINAL, State, check_transition
from connector.negotiation.store import (
    CONSUMER,
    PROVIDER,
    Negotiation,
    NegotiationStore,
    Outgoing,
)
from connector.negotiation.stored import StoredAgreements
from connector.policy.inputs import build_input, subject_of
from connector.policy.point import PolicyPoint
from connector.rpc.auth import Caller
from connector.store.database import RawTransaction

__all__ = ["CONSUMER", "DSP_METHOD", "PROVIDER", "Negotiator", "Received"]

log = logging.getLogger(__name__)

CONTRACT_TERMS = ("operation_grant", "consent")
"""Obligations of a contract decision that name what the agreement rests on: the
authorised-operation grant (public data) or the individual's consent (personal data).
They go into the signed agreement, so disclosure and deletion can be traced to them."""
STALE_MESSAGE = (
    "this message_id has already been used; send each contract request with a new "
    "random message_id and consumer_pid"
)
F = TypeVar("F", bound=Callable[..., Any])
KeyLookup = Callable[[str], ed25519.Ed25519PublicKey]
RevokedCheck = Callable[[str, int], None]
"""``(participant, certificate_serial)``: raise ``AuthenticationError`` if either is
revoked by the operator, ``Unavailable`` when no current revocation list is at hand."""


def _nothing_revoked(_participant: str, _serial: int) -> None:
    """For a negotiator without a registry (tests of the negotiation alone)."""


def _nothing_held(_agreement_id: str) -> None:
    """For a negotiator that holds no data (tests of the negotiation alone)."""


def retrying(method: F) -> F:
    """Run again (up to 3 times) when a concurrent change won the compare-and-set."""

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(3):
            try:
                return method(*args, **kwargs)
            except Aborted:
                if attempt == 2:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    return run  # type: ignore[return-value]


def _moved(
    start: State | None,
    state: State,
    role: str,
    counterparty: str,
    product: str,
    pid: str,
    extra: dict[str, object] | None = None,
) -> Record:
    """The audit entry of one transition."""
    return (
        TRANSITION_KIND,
        [counterparty],
        {
            "pid": pid,
            "role": role,
            "counterparty": counterparty,
            "product": product,
            "from": start.value if start else "",
            "to": state.value,
            **(extra or {}),
        },
    )


DSP_METHOD = "dsp:"
"""The prefix of an outbox method sent over the Dataspace Protocol binding (to the
negotiation's ``peer_address``) rather than over gRPC: ``dsp:SendAgreement``."""


def _outgoing(peer_address: str | None, target: str, method: str, message: Any) -> Outgoing:
    """A message to the other side, by the binding its negotiation runs over (DSP when
    the negotiation keeps the peer's DSP address, gRPC otherwise)."""
    return Outgoing(
        target,
        (DSP_METHOD if peer_address else "") + method,
        message.SerializeToString(),
        message.message_id,
    )


@dataclasses.dataclass
class Received:
    """What a receiver reads first — negotiation ``pid`` as read and whether the message
    ``message_id`` was already processed (``Negotiator.received``) — read by a binding
    that needs the row for checks of its own before the negotiator is called, and handed
    to it so the row is read once, not twice. The negotiator makes every check of its
    own on it as on a row it read itself, and takes it once: a retry after a lost
    compare-and-set reads again (the move itself re-checks the row and the inbox under
    its transaction, as it does for a row the negotiator read)."""

    pid: str
    message_id: str
    negotiation: Negotiation
    seen: bool
    taken: bool = False

    def take(self, pid: str, message_id: str) -> tuple[Negotiation, bool] | None:
        """The row and the inbox as read, once, if read for this ``pid`` and message."""
        if self.taken or (pid, message_id) != (self.pid, self.message_id):
            return None
        self.taken = True
        return self.negotiation, self.seen


def _ack(n: Negotiation) -> negotiation_pb2.NegotiationAck:
    ack = negotiation_pb2.NegotiationAck(pid=n.pid, state=n.state.value, reasons=list(n.reasons))
    if n.role == PROVIDER and n.state == State.AGREED and n.agreement:
        ack.agreement = n.agreement  # the consumer need not wait for SendAgreement
    return ack


class Negotiator:
    """One connector's negotiations, as provider and as consumer."""

    def __init__(
        self,
        *,
        participant: str,
        signing_key: ed25519.Ed25519PrivateKey,
        store: NegotiationStore,
        catalog: Catalog,
        policy: PolicyPoint,
        audit: AuditLog,
        clock: Clock,
        keys: KeyLookup,
        consent: ConsentLookup = no_consent,
        revoked: RevokedCheck = _nothing_revoked,
        revocation_received: Callable[[str], None] = _nothing_held,
        agreement_revoked: Callable[[str, str], None] = lambda agreement_id, reason: None,
    ) -> None:
        """``revocation_received(agreement_id)``: called once a provider's signed
        revocation of an agreement we hold is verified and stored (the holdings it
        deletes then go at once). ``agreement_revoked(agreement_id, reason)``: called once
        this connector, the provider, has revoked one (the DSP transfer processes under
        it end at once)."""
        self._agreement_revoked = agreement_revoked
        self._consent = consent
        self._revoked = revoked
        self._revocation_received = revocation_received
        self._me = participant
        self._key = signing_key
        self._store = store
        self._catalog = catalog
        self._policy = policy
        self._audit = audit
        self._clock = clock
        self._keys = keys
        self._stored = StoredAgreements(
            participant=participant, signing_key=signing_key, keys=keys, audit=audit
        )
        # wait_final callers, by negotiation: woken when theirs becomes final, and only then.
        self._watch_lock = threading.Lock()
        self._watchers: dict[str, set[threading.Event]] = {}

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    def _transition(
        self,
        n: Negotiation | str,
        *steps: State,
        agreement: str | None = None,
        agreement_id: str | None = None,
        reasons: list[str] | tuple[str, ...] | None = None,
        counterparty_pid: str | None = None,
        inbox: tuple[str, str] | None = None,
        outgoing: list[Outgoing] | None = None,
        delivered: int | None = None,
        expect: Callable[[Negotiation], bool] | None = None,
        terms: dict[str, Any] | None = None,
        decided: list[Record] | None = None,
        offer: str | None = None,
        purpose: str | None = None,
        requester: dict[str, Any] | None = None,
        details: dict[str, object] | None = None,
        every_step: bool = False,
    ) -> Negotiation:
        """Move ``n`` (or the negotiation of that pid: ``expect`` checks it as read).

        ``decided``: decisions that led to the move, logged before it in its transaction
        (and emptied once committed). ``offer``, ``purpose``: the terms now on the table.
        ``details``: more for the audit entries. ``every_step``: one entry per step (as a
        request agreed at once logs REQUESTED and AGREED), else one for the whole move.
        """
        # The store locks the row, checks the move and makes it, then calls ``record`` in
        # the same transaction: the log never shows a transition the protocol refuses, and
        # nothing is acknowledged that the log does not hold.
        extra: dict[str, object] = dict(details or {})
        if agreement_id:
            extra["agreement_id"] = agreement_id
        if reasons:
            extra["reasons"] = list(reasons)

        def record(was: Negotiation) -> Callable[[RawTransaction], Any]:
            moved = []
            start = was.state
            for step in steps if every_step else steps[-1:]:
                last = step == steps[-1]
                moved.append(
                    _moved(
                        start,
                        step,
                        was.role,
                        was.counterparty,
                        was.product,
                        was.pid,
                        extra if last else details,
                    )
                )
                start = step
            return self._audit.prepare([*(decided or ()), *moved])

        result = self._store.transition(
            n if isinstance(n, str) else n.pid,
            *steps,
            now_ms=self._now_ms(),
            agreement=agreement,
            agreement_id=agreement_id,
            reasons=reasons,
            counterparty_pid=counterparty_pid,
            inbox=inbox,
            outgoing=outgoing or (),
            delivered=delivered,
            expect=expect,
            terms=terms,
            offer=offer,
            purpose=purpose,
            requester=requester,
            prepare=record,
        )
        if decided:
            decided.clear()  # committed with the move
        self._changed_now(result)
        return result

    def _changed_now(self, n: Negotiation) -> None:
        """Wake the ``wait_final`` callers of ``n`` if it is now final."""
        if n.state not in FINAL:
            return
        with self._watch_lock:
            for event in self._watchers.get(n.pid, ()):
                event.set()

    # -- consumer ---------------------------------------------------------------------

    def start(
        self, provider: str, product: str, offer: str, purpose: str, *, peer_address: str = ""
    ) -> Negotiation:
        """Ask ``provider`` for a contract (sent through the outbox).

        ``peer_address``: the provider's Dataspace Protocol binding (an https URL): the
        whole negotiation then runs over DSP instead of gRPC.
        """
        if provider == self._me:
            raise InvalidRequest("a connector cannot negotiate with itself")
        if not product or not offer or not purpose:
            raise InvalidRequest("give the product, the offer and the purpose")
        if peer_address and not peer_address.startswith("https://"):
            raise InvalidRequest("a provider's DSP binding is an https:// URL")
        request = negotiation_pb2.ContractRequest(
            message_id=uuid.uuid4().hex, product_id=product, offer_id=offer, purpose=purpose
        )
        pid = uuid.uuid4().hex
        request.consumer_pid = pid
        extra: dict[str, object] = {"offer": offer, "purpose": purpose}
        moved = _moved(None, State.REQUESTED, CONSUMER, provider, product, pid, extra)
        n = self._store.create(
            role=CONSUMER,
            counterparty=provider,
            counterparty_pid="",
            product=product,
            offer=offer,
            purpose=purpose,
            state=State.REQUESTED,
            now_ms=self._now_ms(),
            outgoing=[_outgoing(peer_address, provider, "RequestContract", request)],
            pid=pid,
            peer_address=peer_address or None,
            before_commit=self._audit.prepare([moved]),  # built before the write lock
        )
        return n

    @retrying
    def request_answered(
        self,
        consumer_pid: str,
        provider: str,
        ack: negotiation_pb2.NegotiationAck,
        delivered: int | None = None,
    ) -> bool:
        """The provider's answer to our request (a first one or a counter-request) or to our
        acceptance of its offer: its process id and, when it agreed at once, the agreement
        (verified and countersigned here); or an immediate refusal.

        ``provider`` is the connector the request went to over mutual TLS: the answer is
        as authentic as a call from it. ``delivered``: the request's outbox row, marked
        delivered in the transaction that takes the answer; whether it was.
        """
        n = self._store.get(consumer_pid)
        if n.state in FINAL or n.counterparty != provider:
            return False
        if ack.state == State.TERMINATED.value:
            self._transition(
                n,
                State.TERMINATED,
                counterparty_pid=ack.pid,
                reasons=list(ack.reasons),
                delivered=delivered,
            )
            return True
        if ack.agreement and n.state in (State.REQUESTED, State.ACCEPTED):
            try:
                self._countersign(n, provider, ack.agreement, ack.pid, delivered=delivered)
            except (InvalidRequest, VerificationError) as exc:
                # Refused for good: end it, and tell the provider (by its process id).
                self._store.transition(n.pid, now_ms=self._now_ms(), counterparty_pid=ack.pid)
                self.terminate(n.pid, f"the provider's agreement is refused: {exc}")
                return False
            return True
        if not n.counterparty_pid or n.counterparty_pid.startswith("pending:"):
            self._store.transition(
                n.pid, now_ms=self._now_ms(), counterparty_pid=ack.pid, delivered=delivered
            )
            return True
        return False

    @retrying
    def verification_answered(
        self,
        consumer_pid: str,
        provider: str,
        ack: negotiation_pb2.NegotiationAck,
        delivered: int | None = None,
    ) -> bool:
        """The provider's answer to our countersignature: FINALIZED ends it here too
        (``delivered`` as for ``request_answered``)."""
        if ack.state != State.FINALIZED.value:
            return False
        try:  # checked as read in the transition's own transaction: one read, not two
            self._transition(
                consumer_pid,
                State.FINALIZED,
                delivered=delivered,
                expect=lambda n: (
                    n.state == State.VERIFIED and n.counterparty == provider and n.role == CONSUMER
                ),
            )
        except (NotFound, PreconditionFailed):
            return False
        return True

    @retrying
    def receive_agreement(
        self,
        caller: Caller,
        msg: negotiation_pb2.AgreementMessage,
        *,
        read: Received | None = None,
        parsed: ParsedAgreement | None = None,
    ) -> negotiation_pb2.NegotiationAck:
        """Provider → consumer: verify, countersign, send back (AGREED → VERIFIED).

        ``parsed``: the agreement's terms as the binding parsed them for checks of its own
        (used only if parsed from ``msg.agreement``, which is verified all the same)."""
        n, seen = self._own(msg.consumer_pid, CONSUMER, caller, msg.message_id, read)
        if seen or n.state in (State.VERIFIED, State.FINALIZED):
            return _ack(n)
        n = self._countersign(
            n,
            caller.participant,
            msg.agreement,
            msg.provider_pid,
            inbox=(msg.message_id, caller.participant),
            parsed=parsed,
        )
        return _ack(n)

    def _countersign(
        self,
        n: Negotiation,
        provider: str,
        signed: str,
        provider_pid: str,
        *,
        inbox: tuple[str, str] | None = None,
        delivered: int | None = None,
        parsed: ParsedAgreement | None = None,
    ) -> Negotiation:
        """Check the provider's agreement against what we asked for, countersign it, send
        it back (AGREED → VERIFIED)."""
        # Verified and countersigned in one pass; what it signs is checked before it is
        # stored or sent.
        agreement, countersigned = countersigned_agreement(
            signed, self._key, self._keys, parsed=parsed
        )
        expected = (provider, self._me, n.product, n.offer, n.purpose, n.pid)
        actual = (
            agreement.provider,
            agreement.consumer,
            agreement.product,
            agreement.offer,
            agreement.purpose,
            agreement.consumer_pid,
        )
        if actual != expected or agreement.provider_pid != provider_pid:
            raise InvalidRequest("the agreement's terms are not what was requested")
        reply = negotiation_pb2.AgreementMessage(
            message_id=uuid.uuid4().hex,
            provider_pid=provider_pid,
            consumer_pid=n.pid,
            agreement=countersigned,
        )
        return self._transition(
            n,
            State.AGREED,
            State.VERIFIED,
            counterparty_pid=provider_pid,
            agreement=countersigned,
            agreement_id=agreement.id,
            inbox=inbox,
            delivered=delivered,
            outgoing=[_outgoing(n.peer_address, n.counterparty, "VerifyAgreement", reply)],
        )

    @retrying
    def receive_final(
        self,
        caller: Caller,
        event: negotiation_pb2.NegotiationEvent,
        *,
        read: Received | None = None,
    ) -> negotiation_pb2.NegotiationAck:
        """Provider → consumer: the negotiation is finalized."""
        n, seen = self._own(event.consumer_pid, CONSUMER, caller, event.message_id, read)
        if seen or n.state == State.FINALIZED:
            return _ack(n)
        if event.state != State.FINALIZED.value:
            raise InvalidRequest("only FINALIZED events are sent between connectors")
        try:
            n = self._transition(n, State.FINALIZED, inbox=(event.message_id, caller.participant))
        except PreconditionFailed:
            # Over DSP this event and the answer to our verification race for the move: one
            # finalized by the answer meanwhile takes the event as a repeat, changing
            # nothing. Any other state still refuses it.
            now = self._store.get(n.pid)
            if now.state != State.FINALIZED:
                raise
            return _ack(now)
        return _ack(n)

    # -- provider ---------------------------------------------------------------------

    @retrying
    def receive_request(
        self,
        caller: Caller,
        req: negotiation_pb2.ContractRequest,
        *,
        peer_address: str = "",
        read: Received | None = None,
    ) -> negotiation_pb2.NegotiationAck:
        """Consumer → provider: decide by the contract policy.

        ``peer_address``: the request came over the Dataspace Protocol binding with this
        (checked) callback address; what the provider sends later goes there over DSP.
        ``read``: for a counter-request, our negotiation as the binding read it.
        """
        if not req.consumer_pid or not req.message_id:
            raise InvalidRequest("a contract request needs consumer_pid and message_id")
        if req.provider_pid:
            return self._receive_counter(caller, req, read)
        known = self._store.find(PROVIDER, caller.participant, req.consumer_pid)
        if known is not None:  # a repeated request: same answer, nothing changes
            return _ack(known)
        if self._store.processed(req.message_id):
            # A copy of this very request sent at the same time may have committed between
            # the look-up above and this one: then it is the caller's repeat after all.
            known = self._store.find(PROVIDER, caller.participant, req.consumer_pid)
            if known is not None:
                return _ack(known)
            # Not this caller's repeat: someone else's message id, replayed or reused.
            # Refused without a word about whose, or what it started.
            raise ConflictError(STALE_MESSAGE)
        # The access and contract decisions are logged with the transitions they lead to,
        # in one write; whatever ends the request first, they are logged before it answers.
        decided: list[Record] = []
        try:
            return self._answer_request(caller, req, decided, peer_address)
        finally:
            if decided:
                self._audit.record_many(decided)

    def _answer_request(
        self,
        caller: Caller,
        req: negotiation_pb2.ContractRequest,
        decided: list[Record],
        peer_address: str,
    ) -> negotiation_pb2.NegotiationAck:
        product = self._catalog.own(req.product_id)  # NOT_FOUND when there is none
        try:
            offer = product.offer(req.offer_id)
        except KeyError:
            # A hidden product's offers are as unknown as the product: ask the access policy.
            self._catalog.get_visible(caller, product.id, defer=decided)
            raise NotFound(f"offer {req.offer_id!r} of product {product.id!r} not found") from None
        subject = subject_of(caller)
        document = self._contract_input(subject, product, offer, req.purpose)
        # The contract decision says whether the access policy lets the caller see the
        # product at all (one evaluation, not two); a library whose contract decision
        # does not say is asked separately. Hidden looks exactly like missing.
        decision = self._policy.decide(document, defer=decided)
        if decision.visible is None:
            self._catalog.get_visible(caller, product.id, defer=decided)
        elif not decision.visible:
            raise NotFound(f"product {product.id!r} not found")
        common: dict[str, Any] = {
            "role": PROVIDER,
            "counterparty": caller.participant,
            "counterparty_pid": req.consumer_pid,
            "product": product.id,
            "offer": offer.id,
            "purpose": req.purpose,
            "now_ms": self._now_ms(),
            "inbox": (req.message_id, caller.participant),
            "peer_address": peer_address or None,
        }
        pid = uuid.uuid4().hex
        state = State.REQUESTED if decision.allow else State.TERMINATED
        extra: dict[str, object] = {"decision": decision.id}
        terms = {k: decision.obligations[k] for k in CONTRACT_TERMS if k in decision.obligations}
        requester: dict[str, Any] | None = None
        if decision.allow:
            extra["needs_approval"] = decision.needs_approval
            extra.update(terms)
            if decision.needs_approval:
                # The approval decides again, maybe days later, with this subject.
                requester = {
                    "subject": subject,
                    "certificate_serial": caller.certificate_serial,
                }
        else:
            extra["reasons"] = list(decision.deny)
        records = [_moved(None, state, PROVIDER, caller.participant, product.id, pid, extra)]
        agreed: dict[str, Any] = {}
        if decision.allow and not decision.needs_approval:
            # Agreed at once: REQUESTED and AGREED are stored, and logged, in one transaction.
            agreement_id, signed = self._agreement(
                pid=pid,
                consumer=caller.participant,
                consumer_pid=req.consumer_pid,
                product=product,
                offer=offer,
                purpose=req.purpose,
                terms=terms,
                revision=decision.revision,
            )
            check_transition(State.REQUESTED, State.AGREED)
            state = State.AGREED
            # The agreement goes back in the answer to this request (see ``_ack``), not in
            # a SendAgreement call: the consumer's outbox repeats the request until it has
            # taken the answer, and a repeated request gets the same agreement.
            agreed = {"agreement": signed, "agreement_id": agreement_id}
            if peer_address:
                # A DSP answer carries no agreement: it goes to the consumer's callback.
                msg = negotiation_pb2.AgreementMessage(
                    message_id=uuid.uuid4().hex,
                    provider_pid=pid,
                    consumer_pid=req.consumer_pid,
                    agreement=signed,
                )
                agreed["outgoing"] = [
                    _outgoing(peer_address, caller.participant, "SendAgreement", msg)
                ]
            records.append(
                _moved(
                    State.REQUESTED,
                    State.AGREED,
                    PROVIDER,
                    caller.participant,
                    product.id,
                    pid,
                    {"agreement_id": agreement_id},
                )
            )

        try:
            n = self._store.create(
                state=state,
                reasons=() if decision.allow else decision.deny,
                terms=terms,
                requester=requester,
                pid=pid,
                before_commit=self._audit.prepare([*decided, *records]),
                **agreed,
                **common,
            )
        except ConflictError:  # a replica took the same request first: answer as it did
            known = self._store.find(PROVIDER, caller.participant, req.consumer_pid)
            if known is None:
                raise
            return _ack(known)
        decided.clear()  # committed with the negotiation
        self._changed_now(n)
        return _ack(n)

    def _contract_input(
        self, subject: dict[str, Any], product: Product, offer: Offer, purpose: str
    ) -> dict[str, Any]:
        """The input document of a contract decision: the product, offer and consent as
        they are now, the subject as verified."""
        return build_input(
            "contract.request",
            subject=subject,
            resource=product.resource(),
            clock=self._clock,
            offer={
                "id": offer.id,
                "purposes": list(offer.purposes),
                "valid_from_ns": offer.valid_from_ns,
                "valid_until_ns": offer.valid_until_ns,
                "max_transfers": offer.max_transfers,
                "max_bytes": offer.max_bytes,
                "obligations": offer.obligations,
                "policy_module": offer.policy_module,
            },
            contract={"purpose": purpose},
            context={
                "consent": dict(self._consent(subject["id"], product.id, purpose))
                if product.personal
                else {}
            },
        )

    def _agreement(
        self,
        *,
        pid: str,
        consumer: str,
        consumer_pid: str,
        product: Product,
        offer: Offer,
        purpose: str,
        terms: dict[str, Any],
        revision: str,
    ) -> tuple[str, str]:
        """The signed agreement for an offer: its id and the JWS."""
        agreement = Agreement(
            id=f"ag-{uuid.uuid4().hex}",
            provider=self._me,
            consumer=consumer,
            product=product.id,
            offer=offer.id,
            purpose=purpose,
            valid_from_ns=offer.valid_from_ns,
            valid_until_ns=offer.valid_until_ns,
            max_transfers=offer.max_transfers,
            max_bytes=offer.max_bytes,
            policy_revision=revision,
            provider_pid=pid,
            consumer_pid=consumer_pid,
            issued_ms=self._now_ms(),
            obligations={**offer.obligations, **terms},
            permitted_fields=offer.permitted_fields,
            masks=dict(offer.masks),
            registration_code=product.registration_code,
            delivery=offer.delivery,
            compute=offer.compute.to_dict() if offer.compute is not None else None,
            max_messages=offer.max_messages,
            per_period=asdict(offer.per_period) if offer.per_period is not None else None,
        )
        return agreement.id, sign_agreement(agreement, self._key)

    def _agree(
        self,
        n: Negotiation,
        product: Product,
        offer: Offer,
        terms: dict[str, Any],
        revision: str,
        decided: list[Record],
    ) -> Negotiation:
        agreement_id, signed = self._agreement(
            pid=n.pid,
            consumer=n.counterparty,
            consumer_pid=n.counterparty_pid,
            product=product,
            offer=offer,
            purpose=n.purpose,
            terms=terms,
            revision=revision,
        )
        # After an approval the agreement goes to the consumer in a call of its own.
        msg = negotiation_pb2.AgreementMessage(
            message_id=uuid.uuid4().hex,
            provider_pid=n.pid,
            consumer_pid=n.counterparty_pid,
            agreement=signed,
        )
        return self._transition(
            n,
            State.AGREED,
            agreement=signed,
            agreement_id=agreement_id,
            terms=terms,
            outgoing=[_outgoing(n.peer_address, n.counterparty, "SendAgreement", msg)],
            decided=decided,
        )

    @retrying
    def approve(self, pid: str) -> Negotiation:
        """The provider's admin approves a negotiation waiting in REQUESTED (or ACCEPTED:
        the consumer accepted the provider's offer).

        The approval is a contract decision taken again, now: the requester must not
        have been revoked since, the product and offer must still be published, and the
        contract policy must still allow the request (an offer expired, a grant or
        consent withdrawn while it waited refuses it). A refused approval changes nothing
        (its decision is logged): the admin rejects the negotiation to tell the consumer.
        """
        n = self._waiting(pid, (State.REQUESTED, State.ACCEPTED), "approve")
        product, offer = self._still_published(n, n.offer, "approve")
        decided: list[Record] = []
        try:
            decision = self._decide_again(n, product, offer, n.purpose, decided, "approve")
            terms = {
                k: decision.obligations[k] for k in CONTRACT_TERMS if k in decision.obligations
            }
            # Logged with the transition, in its transaction.
            return self._agree(n, product, offer, terms, decision.revision, decided)
        finally:
            if decided:  # the transition did not take them: log them on their own
                self._audit.record_many(decided)

    def _waiting(self, pid: str, states: tuple[State, ...], action: str) -> Negotiation:
        """Our negotiation ``pid`` as provider, waiting in one of ``states`` for the admin,
        with its requester's identity as verified then and not revoked since."""
        n = self._own_local(pid, PROVIDER)
        if n.state not in states:
            raise PreconditionFailed(f"negotiation {pid} is {n.state.value}, not waiting")
        if not n.requester:
            raise PreconditionFailed(
                f"negotiation {pid} does not hold its requester's verified identity "
                "(it was requested before tds kept it for approval); reject it and ask "
                f"{n.counterparty} to request again"
            )
        try:
            self._revoked(n.counterparty, int(n.requester["certificate_serial"]))
        except AuthenticationError as exc:
            raise PreconditionFailed(f"cannot {action} negotiation {pid}: {exc}") from None
        return n

    def _still_published(self, n: Negotiation, offer_id: str, action: str) -> tuple[Product, Offer]:
        published = self._catalog.published(n.product, offer_id)
        if published is None:
            raise PreconditionFailed(
                f"cannot {action} negotiation {n.pid}: offer {offer_id!r} of product "
                f"{n.product!r} is "
                + ("no longer published; reject it" if action == "approve" else "not published")
            )
        return published

    def _decide_again(
        self,
        n: Negotiation,
        product: Product,
        offer: Offer,
        purpose: str,
        decided: list[Record],
        action: str,
    ) -> Any:
        """The contract decision, now, for the waiting requester and these terms; refused
        (``PreconditionFailed``, nothing changed) unless it allows them."""
        assert n.requester is not None
        document = self._contract_input(n.requester["subject"], product, offer, purpose)
        try:
            decision = self._policy.decide(document, defer=decided)
        except Unavailable as exc:  # the engine did not answer: the request may be fine
            raise Unavailable(
                f"cannot {action} negotiation {n.pid} now: {exc}; it still waits, "
                f"{action} it again then"
            ) from None
        if not decision.allow or decision.visible is False:
            reasons = ", ".join(decision.deny) or "not visible to the requester"
            raise PreconditionFailed(
                f"cannot {action} negotiation {n.pid}: the contract policy "
                + ("now denies it" if action == "approve" else "denies these terms")
                + f" ({reasons}); reject it to tell {n.counterparty}"
            )
        return decision

    # -- counter-offers ---------------------------------------------------------------

    @retrying
    def offer(self, pid: str, offer_id: str, purpose: str) -> Negotiation:
        """The provider's admin answers a request waiting for it with other terms
        (REQUESTED → OFFERED): ``offer_id``, a published offer of the same product, for
        ``purpose``. Only terms the contract policy allows the requester are offered; the
        offer is sent to the consumer, who accepts it or counters."""
        LABEL_ID.check(offer_id)
        LABEL_ID.check(purpose)
        n = self._waiting(pid, (State.REQUESTED,), "offer on")
        if (offer_id, purpose) == (n.offer, n.purpose):
            raise InvalidRequest(
                f"offer {offer_id!r} for {purpose!r} is what {n.counterparty} requested: "
                "approve the negotiation instead"
            )
        product, offer = self._still_published(n, offer_id, "offer on")
        decided: list[Record] = []
        try:
            decision = self._decide_again(n, product, offer, purpose, decided, "offer on")
            msg = negotiation_pb2.ContractOffer(
                message_id=uuid.uuid4().hex,
                provider_pid=n.pid,
                consumer_pid=n.counterparty_pid,
                product_id=n.product,
                offer_id=offer.id,
                purpose=purpose,
            )
            return self._transition(
                n,
                State.OFFERED,
                offer=offer.id,
                purpose=purpose,
                details={"offer": offer.id, "purpose": purpose, "decision": decision.id},
                outgoing=[_outgoing(n.peer_address, n.counterparty, "SendOffer", msg)],
                decided=decided,
            )
        finally:
            if decided:
                self._audit.record_many(decided)

    @retrying
    def receive_offer(
        self, caller: Caller, msg: negotiation_pb2.ContractOffer, *, read: Received | None = None
    ) -> negotiation_pb2.NegotiationAck:
        """Provider → consumer: other terms for our request (REQUESTED → OFFERED), kept as
        the terms on the table until our admin accepts or counters them."""
        n, seen = self._own(msg.consumer_pid, CONSUMER, caller, msg.message_id, read)
        if seen:
            return _ack(n)
        PROCESS_ID.check(msg.provider_pid)
        known = n.counterparty_pid
        if not known.startswith("pending:") and msg.provider_pid != known:
            raise NotFound("no such negotiation")
        if msg.product_id and msg.product_id != n.product:
            raise InvalidRequest(
                f"an offer in this negotiation is for product {n.product!r}, not {msg.product_id!r}"
            )
        LABEL_ID.check(msg.offer_id)
        LABEL_ID.check(msg.purpose)
        n = self._transition(
            n,
            State.OFFERED,
            offer=msg.offer_id,
            purpose=msg.purpose,
            counterparty_pid=msg.provider_pid,
            details={"offer": msg.offer_id, "purpose": msg.purpose},
            inbox=(msg.message_id, caller.participant),
        )
        return _ack(n)

    def _offered(self, pid: str, action: str) -> Negotiation:
        n = self._own_local(pid, CONSUMER)
        if n.state != State.OFFERED:
            raise PreconditionFailed(
                f"cannot {action} on negotiation {pid}: it is {n.state.value}, and only an "
                "OFFERED negotiation holds an offer from the provider"
            )
        return n

    @retrying
    def accept(self, pid: str) -> Negotiation:
        """The consumer's admin accepts the provider's offer (OFFERED → ACCEPTED); the
        provider then sends the agreement over those terms."""
        n = self._offered(pid, "accept an offer")
        event = negotiation_pb2.NegotiationEvent(
            message_id=uuid.uuid4().hex,
            provider_pid=n.counterparty_pid,
            consumer_pid=n.pid,
            state=State.ACCEPTED.value,
        )
        return self._transition(
            n,
            State.ACCEPTED,
            details={"offer": n.offer, "purpose": n.purpose},
            outgoing=[_outgoing(n.peer_address, n.counterparty, "Accept", event)],
        )

    @retrying
    def counter(self, pid: str, offer_id: str, purpose: str) -> Negotiation:
        """The consumer's admin answers the provider's offer with other terms (OFFERED →
        REQUESTED): a counter-request, decided by the provider's contract policy."""
        LABEL_ID.check(offer_id)
        LABEL_ID.check(purpose)
        n = self._offered(pid, "counter")
        if (offer_id, purpose) == (n.offer, n.purpose):
            raise InvalidRequest(
                f"offer {offer_id!r} for {purpose!r} is what {n.counterparty} offered: "
                "accept it instead"
            )
        request = negotiation_pb2.ContractRequest(
            message_id=uuid.uuid4().hex,
            consumer_pid=n.pid,
            provider_pid=n.counterparty_pid,
            product_id=n.product,
            offer_id=offer_id,
            purpose=purpose,
        )
        return self._transition(
            n,
            State.REQUESTED,
            offer=offer_id,
            purpose=purpose,
            details={"offer": offer_id, "purpose": purpose},
            outgoing=[_outgoing(n.peer_address, n.counterparty, "RequestContract", request)],
        )

    def _receive_counter(
        self, caller: Caller, req: negotiation_pb2.ContractRequest, read: Received | None
    ) -> negotiation_pb2.NegotiationAck:
        """Consumer → provider: a counter-request on our offer (OFFERED → REQUESTED),
        decided by the contract policy as a first request is: refused (→ TERMINATED),
        waiting for approval, or agreed at once over the terms it names (→ AGREED)."""
        n, seen = self._own(req.provider_pid, PROVIDER, caller, req.message_id, read)
        if seen:
            return _ack(n)
        if req.consumer_pid != n.counterparty_pid:
            raise NotFound("no such negotiation")
        if req.product_id and req.product_id != n.product:
            raise InvalidRequest(
                f"a counter-request in this negotiation is for product {n.product!r}, not "
                f"{req.product_id!r}"
            )
        LABEL_ID.check(req.purpose)
        check_transition(n.state, State.REQUESTED)  # out of order: refused before deciding
        decided: list[Record] = []
        try:
            product = self._catalog.own(n.product)
            try:
                offer = product.offer(req.offer_id)
            except KeyError:
                raise NotFound(
                    f"offer {req.offer_id!r} of product {product.id!r} not found"
                ) from None
            subject = subject_of(caller)
            decision = self._policy.decide(
                self._contract_input(subject, product, offer, req.purpose), defer=decided
            )
            visible = decision.visible
            if visible is None:
                try:
                    self._catalog.get_visible(caller, product.id, defer=decided)
                    visible = True
                except NotFound:
                    visible = False
            terms = {
                k: decision.obligations[k] for k in CONTRACT_TERMS if k in decision.obligations
            }
            details: dict[str, object] = {
                "offer": offer.id,
                "purpose": req.purpose,
                "decision": decision.id,
            }
            common: dict[str, Any] = {
                "offer": offer.id,
                "purpose": req.purpose,
                "inbox": (req.message_id, caller.participant),
                "decided": decided,
                "every_step": True,
            }
            if not decision.allow or not visible:
                reasons = list(decision.deny) or ["not visible to the requester"]
                n = self._transition(
                    n,
                    State.REQUESTED,
                    State.TERMINATED,
                    reasons=reasons,
                    details=details,
                    **common,
                )
            elif decision.needs_approval:
                n = self._transition(
                    n,
                    State.REQUESTED,
                    terms=terms,
                    requester={"subject": subject, "certificate_serial": caller.certificate_serial},
                    details={**details, "needs_approval": True, **terms},
                    **common,
                )
            else:
                n = self._agree_at_once(
                    n,
                    product,
                    offer,
                    req.purpose,
                    terms,
                    decision.revision,
                    details,
                    common,
                    State.REQUESTED,
                )
            return _ack(n)
        finally:
            if decided:
                self._audit.record_many(decided)

    def _agree_at_once(
        self,
        n: Negotiation,
        product: Product,
        offer: Offer,
        purpose: str,
        terms: dict[str, Any],
        revision: str,
        details: dict[str, object],
        common: dict[str, Any],
        first: State,
    ) -> Negotiation:
        """``first`` then AGREED, in one transaction: the agreement signed over ``offer``
        for ``purpose`` goes back in the answer (gRPC) or to the consumer's callback (DSP)."""
        agreement_id, signed = self._agreement(
            pid=n.pid,
            consumer=n.counterparty,
            consumer_pid=n.counterparty_pid,
            product=product,
            offer=offer,
            purpose=purpose,
            terms=terms,
            revision=revision,
        )
        outgoing = []
        if n.peer_address:  # a DSP answer carries no agreement: it goes to the callback
            msg = negotiation_pb2.AgreementMessage(
                message_id=uuid.uuid4().hex,
                provider_pid=n.pid,
                consumer_pid=n.counterparty_pid,
                agreement=signed,
            )
            outgoing.append(_outgoing(n.peer_address, n.counterparty, "SendAgreement", msg))
        return self._transition(
            n,
            first,
            State.AGREED,
            agreement=signed,
            agreement_id=agreement_id,
            terms=terms,
            outgoing=outgoing,
            details=details,
            **common,
        )

    @retrying
    def receive_verification(
        self, caller: Caller, msg: negotiation_pb2.AgreementMessage, *, read: Received | None = None
    ) -> negotiation_pb2.NegotiationAck:
        """Consumer → provider: the countersigned agreement (→ VERIFIED → FINALIZED)."""
        n, seen = self._own(msg.provider_pid, PROVIDER, caller, msg.message_id, read)
        if seen or n.state == State.FINALIZED:
            return _ack(n)
        if n.agreement is None:
            raise PreconditionFailed("no agreement was sent for this negotiation")
        # What we stored as sent must be what we signed (the row may have been edited);
        # then the terms and our signature must be the ones sent, and the consumer's
        # must verify.
        self._stored.verified(n, "agreement.finalize")
        verify_returned_agreement(
            msg.agreement, n.agreement, self._keys, provider=self._me, consumer=n.counterparty
        )
        # Over gRPC, FINALIZED reaches the consumer as the answer to this call, which its
        # outbox repeats until it has taken one: no Finalize call back is needed. A DSP
        # consumer learns it from an event message (#negotiations-consumerpid-events-post).
        event: list[Outgoing] = []
        if n.peer_address:
            final = negotiation_pb2.NegotiationEvent(
                message_id=uuid.uuid4().hex,
                provider_pid=n.pid,
                consumer_pid=n.counterparty_pid,
                state=State.FINALIZED.value,
            )
            event.append(_outgoing(n.peer_address, n.counterparty, "Finalize", final))
        n = self._transition(
            n,
            State.VERIFIED,
            State.FINALIZED,
            agreement=msg.agreement,
            agreement_id=n.agreement_id,  # the one sent, as verified above
            inbox=(msg.message_id, caller.participant),
            outgoing=event,
        )
        return _ack(n)

    @retrying
    def receive_accepted(
        self,
        caller: Caller,
        event: negotiation_pb2.NegotiationEvent,
        *,
        read: Received | None = None,
    ) -> negotiation_pb2.NegotiationAck:
        """Consumer → provider: it accepts the provider's offer (OFFERED → ACCEPTED,
        #negotiations-providerpid-events-post). Our admin's offer was the approval: the
        contract policy decides again, now, over the offered terms, and the agreement is
        signed over them at once (→ AGREED; in the answer over gRPC, to the callback over
        DSP), or the negotiation ends (→ TERMINATED) if the policy no longer allows them or
        the offer is no longer published. Out of state order (no offer outstanding):
        ``PreconditionFailed``, nothing changed."""
        n, seen = self._own(event.provider_pid, PROVIDER, caller, event.message_id, read)
        if seen:
            return _ack(n)
        if event.state != State.ACCEPTED.value:
            raise InvalidRequest("a consumer's event to the provider is ACCEPTED")
        if event.consumer_pid and event.consumer_pid != n.counterparty_pid:
            raise NotFound("no such negotiation")
        check_transition(n.state, State.ACCEPTED)  # out of order: refused before deciding
        decided: list[Record] = []
        common: dict[str, Any] = {
            "inbox": (event.message_id, caller.participant),
            "decided": decided,
            "every_step": True,
        }
        try:
            published = self._catalog.published(n.product, n.offer)
            if published is None:
                reasons = [f"offer {n.offer!r} of product {n.product!r} is no longer published"]
                n = self._transition(n, State.ACCEPTED, State.TERMINATED, reasons=reasons, **common)
                return _ack(n)
            product, offer = published
            document = self._contract_input(subject_of(caller), product, offer, n.purpose)
            decision = self._policy.decide(document, defer=decided)
            details: dict[str, object] = {
                "offer": n.offer,
                "purpose": n.purpose,
                "decision": decision.id,
            }
            if not decision.allow or decision.visible is False:
                reasons = list(decision.deny) or ["not visible to the requester"]
                n = self._transition(
                    n, State.ACCEPTED, State.TERMINATED, reasons=reasons, details=details, **common
                )
                return _ack(n)
            terms = {
                k: decision.obligations[k] for k in CONTRACT_TERMS if k in decision.obligations
            }
            n = self._agree_at_once(
                n,
                product,
                offer,
                n.purpose,
                terms,
                decision.revision,
                details,
                common,
                State.ACCEPTED,
            )
            return _ack(n)
        finally:
            if decided:
                self._audit.record_many(decided)

    # -- both -------------------------------------------------------------------------

    @retrying
    def terminate(self, pid: str, reason: str) -> Negotiation:
        """This side ends a negotiation that is not final, and tells the other side."""
        n = self._store.get(pid)
        reason = reason.strip() or "terminated by " + self._me
        msg = negotiation_pb2.NegotiationTermination(
            message_id=uuid.uuid4().hex,
            provider_pid=n.pid if n.role == PROVIDER else n.counterparty_pid,
            consumer_pid=n.pid if n.role == CONSUMER else n.counterparty_pid,
            reasons=[reason],
        )
        return self._transition(
            n,
            State.TERMINATED,
            reasons=[reason],
            outgoing=[_outgoing(n.peer_address, n.counterparty, "Terminate", msg)],
        )

    @retrying
    def end_locally(self, pid: str, reason: str) -> Negotiation:
        """End a negotiation here without telling the other side (it cannot be reached)."""
        return self._transition(self._store.get(pid), State.TERMINATED, reasons=[reason])

    @retrying
    def reject(self, pid: str, reason: str) -> Negotiation:
        """The provider's admin rejects a negotiation waiting for approval."""
        n = self._own_local(pid, PROVIDER)
        if n.state != State.REQUESTED:
            raise PreconditionFailed(f"negotiation {pid} is {n.state.value}, not waiting")
        result: Negotiation = self.terminate(pid, reason or "rejected by the provider")
        return result

    @retrying
    def receive_termination(
        self, caller: Caller, msg: negotiation_pb2.NegotiationTermination
    ) -> negotiation_pb2.NegotiationAck:
        """The other side ended the negotiation."""
        n = self._find_for(caller, msg.provider_pid, msg.consumer_pid)
        if n is None:
            raise NotFound("no such negotiation")
        if self._store.processed(msg.message_id) or n.state == State.TERMINATED:
            return _ack(n)
        n = self._transition(
            n,
            State.TERMINATED,
            reasons=list(msg.reasons)[:5] or ["terminated"],
            inbox=(msg.message_id, caller.participant),
        )
        return _ack(n)

    def _find_for(self, caller: Caller, provider_pid: str, consumer_pid: str) -> Negotiation | None:
        for pid in (provider_pid, consumer_pid):
            try:
                n = self._store.get(pid)
            except NotFound:
                continue
            if n.counterparty == caller.participant:
                return n
        return None

    @retrying
    def revoke(self, agreement_id: str, reason: str, *, consent: str = "") -> Negotiation:
        """The provider revokes a finalized agreement, signs the revocation, tells the consumer.

        ``consent``: the revocation is the consequence of the individual withdrawing that
        consent; the consumer's obligations then delete as for a withdrawal.
        """
        n = self._store.by_agreement(agreement_id)
        if n.role != PROVIDER:
            raise PermissionDenied("only the provider revokes an agreement")
        if n.state != State.FINALIZED:
            raise PreconditionFailed(f"agreement {agreement_id} is not finalized")
        if n.revocation:
            raise PreconditionFailed(f"agreement {agreement_id} is already revoked")
        # The revocation is signed and sent to the consumer the row names: only for an
        # agreement that verifies as the one with that consumer.
        self._stored.verified(n, "agreement.revoke")
        body = canonical_json(
            {
                "tds_revocation": 1,
                "agreement": agreement_id,
                "reason": reason or "revoked",
                "revoked_ms": self._now_ms(),
                **({"consent_withdrawn": consent} if consent else {}),
            }
        )
        signed = jws.sign(body, self._key, signer=self._me, role="provider")
        msg = negotiation_pb2.AgreementRevocation(
            message_id=uuid.uuid4().hex, agreement_id=agreement_id, revocation=signed
        )
        self._audit.record(
            "agreement.revoked",
            parties=[n.counterparty],
            data={
                "agreement": agreement_id,
                "reason": reason,
                **({"consent_withdrawn": consent} if consent else {}),
            },
        )
        n = self._store.set_revocation(
            n.pid,
            signed,
            now_ms=self._now_ms(),
            # Over gRPC whatever the negotiation ran over: the Dataspace Protocol has no
            # message that revokes a FINALIZED agreement, and a tds consumer must learn of it
            # to delete what it holds (a peer of another make without the gRPC surface is
            # retried and given up on; this side stops serving either way).
            outgoing=[
                Outgoing(
                    n.counterparty,
                    "RevokeAgreement",
                    msg.SerializeToString(),
                    msg.message_id,
                )
            ],
        )
        self._agreement_revoked(agreement_id, reason or "revoked")
        return n

    @retrying
    def receive_revocation(
        self, caller: Caller, msg: negotiation_pb2.AgreementRevocation
    ) -> negotiation_pb2.NegotiationAck:
        """The provider revoked an agreement we hold."""
        n = self._store.by_agreement(msg.agreement_id)
        if n.counterparty != caller.participant or n.role != CONSUMER:
            raise NotFound("no such agreement")
        if self._store.processed(msg.message_id) or n.revocation:
            return _ack(n)
        jws.verify_signed(
            msg.revocation, self._keys, first=(caller.participant, "provider"), what="revocation"
        )
        body = jws.payload_of(msg.revocation, "revocation")
        if not isinstance(body, dict) or body.get("agreement") != msg.agreement_id:
            raise InvalidRequest("the revocation names another agreement")
        self._audit.record(
            "agreement.revoked",
            parties=[caller.participant],
            data={
                "agreement": msg.agreement_id,
                "reason": str(body.get("reason", "")),
                **(
                    {"consent_withdrawn": str(body["consent_withdrawn"])}
                    if "consent_withdrawn" in body
                    else {}
                ),
            },
        )
        n = self._store.set_revocation(
            n.pid, msg.revocation, now_ms=self._now_ms(), inbox=(msg.message_id, caller.participant)
        )
        self._revocation_received(msg.agreement_id)
        return _ack(n)

    # -- lookups ----------------------------------------------------------------------

    def _own(
        self, pid: str, role: str, caller: Caller, message_id: str, read: Received | None = None
    ) -> tuple[Negotiation, bool]:
        """Our negotiation ``pid`` with ``caller`` in ``role`` (NOT_FOUND for anyone
        else's), and whether the message ``message_id`` was already processed: as ``read``
        by the binding when it read them for this message and they are not yet taken."""
        taken = read.take(pid, message_id) if read is not None else None
        if taken is not None:
            n, seen = taken
        else:
            try:
                n, seen = self._store.get_noting(pid, message_id)
            except NotFound:
                raise NotFound("no such negotiation") from None
        if n.role != role or n.counterparty != caller.participant:
            raise NotFound("no such negotiation")
        return n, seen

    def _own_local(self, pid: str, role: str) -> Negotiation:
        n = self._store.get(pid)
        if n.role != role:
            raise PreconditionFailed(
                f"negotiation {pid} is one where this connector is the {n.role}"
            )
        return n

    def list(
        self, state: str = "", pending_approval: bool = False, agreements: bool = False
    ) -> list[Negotiation]:
        """Negotiations for the admin."""
        wanted = State(state) if state else None
        found = self._store.list(
            State.REQUESTED if pending_approval else wanted, PROVIDER if pending_approval else None
        )
        return [n for n in found if not agreements or n.agreement_id]

    def page(
        self,
        before: Sequence[str],
        limit: int,
        state: str = "",
        pending_approval: bool = False,
        agreements: bool = False,
    ) -> builtins.list[Negotiation]:
        """Up to ``limit`` negotiations for the admin, newest first, after ``before``
        (``store.page_position`` of the last one shown; empty for the newest), filtered as
        ``list`` filters."""
        if before and (len(before) != 2 or not before[0].isdigit()):
            raise InvalidRequest("page position: expected (created_ms, pid)")
        wanted = State(state) if state else None
        return self._store.page_before(
            before,
            limit,
            state=State.REQUESTED if pending_approval else wanted,
            role=PROVIDER if pending_approval else None,
            agreements=agreements,
        )

    def published_offer(self, product: str, offer: str) -> Offer | None:
        """One published offer of our product (an offer we send states its limits)."""
        published = self._catalog.published(product, offer)
        return published[1] if published is not None else None

    def get(self, pid: str) -> Negotiation:
        """One negotiation."""
        return self._store.get(pid)

    def received(self, pid: str, message_id: str) -> Received:
        """Negotiation ``pid`` (or ``NotFound``) and whether ``message_id`` was already
        processed, in one read, for the ``receive_*`` call of that message to take."""
        n, seen = self._store.get_noting(pid, message_id)
        return Received(pid, message_id, n, seen)

    def peer(self, pid: str) -> tuple[str | None, str]:
        """The peer address (None over gRPC) and our role of negotiation ``pid``."""
        return self._store.peer(pid)

    def wait_final(self, pid: str, seconds: float) -> Negotiation:
        """The negotiation once FINALIZED or TERMINATED, or as it is after ``seconds``.

        Woken when this process makes it final; it also looks again every 100 ms, since a
        replica sharing the database may make the transition that matters.
        """
        deadline = time.monotonic() + seconds
        final = threading.Event()
        with self._watch_lock:  # before the first read: a change after it is not missed
            self._watchers.setdefault(pid, set()).add(final)
        try:
            n = self._store.get(pid)
            while n.state not in FINAL and (left := deadline - time.monotonic()) > 0:
                final.wait(min(left, 0.1))
                final.clear()
                n = self._store.get(pid)
            return n
        finally:
            with self._watch_lock:
                watching = self._watchers[pid]
                watching.discard(final)
                if not watching:
                    del self._watchers[pid]

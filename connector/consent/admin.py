"""The individual's administration of its consents: grant, withdraw (with its effects), list."""

from __future__ import annotations

import logging

from connector._proto.tds.v1 import admin_pb2
from connector.consent.register import ConsentRecord, ConsentRegister
from connector.errors import ConnectorError, PreconditionFailed
from connector.identity.names import Role
from connector.negotiation.negotiator import PROVIDER, Negotiator
from connector.negotiation.states import State
from connector.negotiation.store import NegotiationStore

__all__ = ["ConsentAdmin", "consent_info"]

log = logging.getLogger(__name__)


def consent_info(record: ConsentRecord, revoked: list[str] | None = None) -> admin_pb2.ConsentInfo:
    """The admin's view of a consent."""
    c = record.consent
    return admin_pb2.ConsentInfo(
        id=c.id,
        recipient=c.recipient,
        purposes=list(c.purposes),
        method=c.method,
        categories=list(c.categories),
        expires_ns=c.expires_ns,
        granted_ms=c.granted_ms,
        withdrawn=record.withdrawn,
        withdrawn_ms=record.withdrawn_ms,
        signed=record.signed,
        withdrawal=record.withdrawal or "",
        revoked_agreements=revoked or [],
    )


class ConsentAdmin:
    """Consent operations of an individual's connector."""

    def __init__(
        self,
        *,
        role: str,
        register: ConsentRegister,
        negotiator: Negotiator,
        negotiations: NegotiationStore,
    ) -> None:
        self._role = role
        self._register = register
        self._negotiator = negotiator
        self._negotiations = negotiations

    def _individual_only(self) -> None:
        if self._role != Role.INDIVIDUAL.value:
            raise PreconditionFailed(
                f"consent is given by an individual's connector; this one is a {self._role}"
            )

    def grant(self, request: admin_pb2.GrantConsentRequest) -> admin_pb2.ConsentInfo:
        """Record and sign a consent."""
        self._individual_only()
        record = self._register.grant(
            recipient=request.recipient,
            purposes=list(request.purposes),
            method=request.method,
            categories=list(request.categories),
            expires_ns=request.expires_ns,
        )
        return consent_info(record)

    def withdraw(self, request: admin_pb2.WithdrawConsentRequest) -> admin_pb2.ConsentInfo:
        """Withdraw, then revoke every agreement resting on the consent.

        The withdrawal itself is what the next decision sees (and what stops running
        streams); the revocations tell the recipient's connector, through the outbox with
        retries, so its obligations delete the data even if it is down right now.
        """
        self._individual_only()
        record = self._register.withdraw(request.consent_id, request.reason)
        revoked: list[str] = []
        for n in self._negotiations.list(State.FINALIZED, PROVIDER):
            if n.terms.get("consent") != record.consent.id or n.revocation or not n.agreement_id:
                continue
            try:
                self._negotiator.revoke(
                    n.agreement_id,
                    f"consent {record.consent.id} withdrawn by the individual",
                    consent=record.consent.id,
                )
                revoked.append(n.agreement_id)
            except ConnectorError as exc:  # already revoked by a racing call: nothing to do
                log.warning(
                    "agreement not revoked after consent withdrawal",
                    extra={"agreement": n.agreement_id, "reason": str(exc)},
                )
        return consent_info(record, revoked)

    def list(self, request: admin_pb2.ListConsentsRequest) -> admin_pb2.ListConsentsResponse:
        """Consents given, newest last."""
        records = self._register.list(
            request.recipient, include_withdrawn=request.include_withdrawn
        )
        return admin_pb2.ListConsentsResponse(consents=[consent_info(r) for r in records])

"""The provider's check of an agreement it stored, before anything is done under it.

The negotiation row is read back from the database for every transfer, stream check,
receipt and revocation; the database is not trusted to hold what was signed. Each use
verifies the stored agreement's signatures again (``verify_stored_agreement``) — about
0.2 ms, small beside the rest of a call (docs/transfer.md, "The stored agreement") — and
a refusal is logged, in the audit log for the evidence and in the process log for the
administrator, before it is raised.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit import jws
from connector.audit.log import AuditLog
from connector.errors import NotFound, PreconditionFailed, VerificationError
from connector.negotiation.agreement import Agreement, verify_stored_agreement
from connector.negotiation.states import State
from connector.negotiation.store import PROVIDER, Negotiation, NegotiationStore

__all__ = ["StoredAgreements"]

log = logging.getLogger(__name__)


class StoredAgreements:
    """Verifies the agreements this connector stored as their provider."""

    def __init__(
        self,
        *,
        participant: str,
        signing_key: ed25519.Ed25519PrivateKey,
        keys: jws.KeyLookup,
        audit: AuditLog,
    ) -> None:
        self._me = participant
        own = signing_key.public_key()
        # Our own signature is checked with our own key, not the directory's copy: it is
        # at hand, and a registry that is down does not stop the check of it.
        self._keys: jws.KeyLookup = lambda who: own if who == participant else keys(who)
        self._audit = audit

    def verified(self, n: Negotiation, use: str) -> Agreement:
        """The agreement of ``n`` (ours as provider), verified for ``use``; the refusal,
        logged, as ``VerificationError`` when the stored text does not verify."""
        if n.agreement is None or n.agreement_id is None:
            raise PreconditionFailed(f"negotiation {n.pid} holds no agreement")
        try:
            return verify_stored_agreement(
                n.agreement,
                self._keys,
                agreement_id=n.agreement_id,
                provider=self._me,
                consumer=n.counterparty,
                # Countersigned from VERIFIED on; before that only our signature exists.
                countersigned=n.state in (State.VERIFIED, State.FINALIZED),
            )
        except VerificationError as exc:
            log.error(
                "stored agreement does not verify",
                extra={"agreement": n.agreement_id, "use": use, "reason": str(exc)},
            )
            self._audit.record(
                "agreement.unverified",
                parties=[n.counterparty],
                data={"agreement": n.agreement_id, "use": use, "reason": str(exc)[:300]},
            )
            raise

    def finalized_with(
        self, negotiations: NegotiationStore, consumer: str, agreement_id: str, use: str
    ) -> tuple[Agreement, bool]:
        """``consumer``'s finalized agreement with us, verified for ``use`` (a transfer, a
        computation, a stream), and whether it is revoked. ``NotFound`` names no other
        party: an agreement of someone else's reads as one that does not exist."""
        try:
            n = negotiations.by_agreement(agreement_id)
        except NotFound:
            raise NotFound(f"no agreement {agreement_id!r} with you") from None
        if n.role != PROVIDER or n.counterparty != consumer or not n.agreement:
            raise NotFound(f"no agreement {agreement_id!r} with you")
        if n.state != State.FINALIZED:
            raise PreconditionFailed(
                f"agreement {agreement_id} is {n.state.value}, not FINALIZED; finish the "
                "negotiation first"
            )
        return self.verified(n, use), bool(n.revocation)

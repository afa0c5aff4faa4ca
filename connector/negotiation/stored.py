"""The provider's check of an agreement it stored, before anything is done under it.

The negotiation row is read back from the database for every transfer, stream check,
computation, receipt and revocation; the database is not trusted to hold what was signed.
Each use checks the stored agreement's signatures (``verify_stored_agreement``), and a
refusal is logged, in the audit log for the evidence and in the process log for the
administrator, before it is raised.

A verification is remembered for the exact stored text (its SHA-256), the parties and the
counterparty's signing key in force: a computation asks every few milliseconds, and
parsing, re-canonicalising and verifying the agreement was about 0.4 ms of each. A row
edited in the database is other text and is verified (and refused) anew; a counterparty
whose key changed is verified against the new key; a refusal is never remembered. Whether
the agreement is revoked is read from the row on every use, never remembered.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict

from cryptography.hazmat.primitives import serialization
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
        # (agreement id, counterparty, countersigned, SHA-256 of the stored text) ->
        # the agreement and the counterparty's key that verified it.
        self._known: OrderedDict[tuple[str, str, bool, bytes], tuple[Agreement, bytes]] = (
            OrderedDict()
        )
        self._known_lock = threading.Lock()

    _KEEP = 1024
    """Verified agreements remembered (least recently used go first)."""

    def verified(self, n: Negotiation, use: str) -> Agreement:
        """The agreement of ``n`` (ours as provider), verified for ``use``; the refusal,
        logged, as ``VerificationError`` when the stored text does not verify."""
        if n.agreement is None or n.agreement_id is None:
            raise PreconditionFailed(f"negotiation {n.pid} holds no agreement")
        # Countersigned from VERIFIED on; before that only our signature exists.
        countersigned = n.state in (State.VERIFIED, State.FINALIZED)
        key = (
            n.agreement_id,
            n.counterparty,
            countersigned,
            hashlib.sha256(n.agreement.encode()).digest(),
        )
        with self._known_lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
        # This very text verified between these parties: it still does if the key that
        # checked the counterparty's signature is the one in force.
        if known is not None and known[1] == self._their_key(n.counterparty, countersigned):
            return known[0]
        used: dict[str, ed25519.Ed25519PublicKey] = {}

        def lookup(who: str) -> ed25519.Ed25519PublicKey:
            used[who] = self._keys(who)  # remembered: the key that verified
            return used[who]

        try:
            agreement = verify_stored_agreement(
                n.agreement,
                lookup,
                agreement_id=n.agreement_id,
                provider=self._me,
                consumer=n.counterparty,
                countersigned=countersigned,
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
        their_key = _raw(used[n.counterparty]) if countersigned else b""
        with self._known_lock:
            self._known[key] = (agreement, their_key)
            while len(self._known) > self._KEEP:
                self._known.popitem(last=False)
        return agreement

    def _their_key(self, counterparty: str, countersigned: bool) -> bytes:
        """The counterparty's signing key in force, when its signature is checked."""
        return _raw(self._keys(counterparty)) if countersigned else b""

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


def _raw(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

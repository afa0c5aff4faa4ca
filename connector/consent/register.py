"""An individual's consent register (PIPL art. 23 separate consent, 单独同意).

The individual's connector records each consent it gives: to which recipient, for which
purposes, by which processing method, for which data categories (product ids or tags of
the individual's products), until when. The individual's signing key signs it (JWS,
canonical JSON). Policies read the consent that applies to a decision as
``context.consent``. Withdrawing signs a withdrawal that takes effect for the very next
decision; the connector then revokes every agreement made under that consent, which stops
in-flight transfers and tells the recipient's connector, whose obligations delete the data.
Grants and withdrawals are written to the audit log before they take effect.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlmodel import col, select

from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.audit.log import AuditLog
from connector.clock import Clock
from connector.errors import InvalidRequest, NotFound, PreconditionFailed, VerificationError
from connector.identity.names import check_id, check_labels
from connector.store.database import Database
from connector.store.models import ConsentRow

__all__ = [
    "Consent",
    "ConsentLookup",
    "ConsentRecord",
    "ConsentRegister",
    "no_consent",
    "verify_consent",
]

ConsentLookup = Callable[[str, str, str], Mapping[str, Any]]
"""(recipient, product id, purpose) -> the ``context.consent`` of a decision."""


def no_consent(recipient: str, product: str, purpose: str) -> Mapping[str, Any]:
    """No consent register: personal data is refused (fail closed)."""
    return {"present": False}


@dataclass(frozen=True)
class Consent:
    """What the individual agreed to, as signed."""

    id: str
    subject: str
    recipient: str
    purposes: tuple[str, ...]
    method: str
    categories: tuple[str, ...]
    expires_ns: int
    granted_ms: int

    def payload(self) -> bytes:
        """Canonical JSON the individual signs (times as strings: I-JSON)."""
        doc = asdict(self)
        doc["purposes"], doc["categories"] = list(self.purposes), list(self.categories)
        doc["expires_ns"] = str(self.expires_ns)
        return canonical_json({"tds_consent": 1, **doc})

    def covers(self, product: str, tags: tuple[str, ...]) -> bool:
        """Whether the product is among the consented categories (by id or tag)."""
        return product in self.categories or any(t in self.categories for t in tags)


@dataclass(frozen=True)
class ConsentRecord:
    """A consent as the register holds it."""

    consent: Consent
    signed: str
    withdrawn_ms: int = 0
    withdrawal: str | None = None

    @property
    def withdrawn(self) -> bool:
        """Whether the individual withdrew it."""
        return self.withdrawn_ms > 0

    def context(self) -> dict[str, Any]:
        """The ``context.consent`` a policy sees."""
        c = self.consent
        return {
            "present": True,
            "id": c.id,
            "withdrawn": self.withdrawn,
            "expires_ns": c.expires_ns,
            "recipient": c.recipient,
            "purposes": list(c.purposes),
            "method": c.method,
        }


def _parse(signed: str) -> Consent:
    payload = jws.payload_of(signed, "consent")
    if not isinstance(payload, dict) or payload.pop("tds_consent", None) != 1:
        raise VerificationError("payload is not a tds consent")
    try:
        payload["purposes"] = tuple(payload["purposes"])
        payload["categories"] = tuple(payload["categories"])
        payload["expires_ns"] = int(payload["expires_ns"])
        return Consent(**payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"consent has wrong fields: {exc}") from None


def verify_consent(signed: str, keys: jws.KeyLookup) -> Consent:
    """Check the individual's signature on a consent; its terms."""
    consent = _parse(signed)
    jws.verify_signed(signed, keys, first=(consent.subject, "data_subject"), what="consent")
    return consent


def _record(row: ConsentRow) -> ConsentRecord:
    return ConsentRecord(
        consent=_parse(row.signed),
        signed=row.signed,
        withdrawn_ms=row.withdrawn_ms,
        withdrawal=row.withdrawal,
    )


class ConsentRegister:
    """The consents this connector's individual has given, and their withdrawals."""

    def __init__(
        self,
        *,
        participant: str,
        db: Database,
        signing_key: ed25519.Ed25519PrivateKey,
        audit: AuditLog,
        clock: Clock,
        product_tags: Callable[[str], tuple[str, ...]],
    ) -> None:
        self._me = participant
        self._db = db
        self._key = signing_key
        self._audit = audit
        self._clock = clock
        self._product_tags = product_tags

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    def grant(
        self,
        *,
        recipient: str,
        purposes: list[str],
        method: str,
        categories: list[str],
        expires_ns: int,
    ) -> ConsentRecord:
        """Record and sign a consent; logged before it takes effect."""
        recipient = check_id(recipient, "recipient")
        if recipient == self._me:
            raise InvalidRequest("consent is given to another participant, not to yourself")
        method = method.strip()
        if not 0 < len(method) <= 256:
            raise InvalidRequest(
                "describe the processing method (1-256 characters), as PIPL art. 23 asks"
            )
        now_ns = int(self._clock.now() * 1_000_000_000)
        if expires_ns <= now_ns:
            raise InvalidRequest("the consent's expiry must be in the future")
        consent = Consent(
            id=f"cs-{uuid.uuid4().hex[:16]}",
            subject=self._me,
            recipient=recipient,
            purposes=check_labels(purposes, "purpose"),
            method=method,
            categories=check_labels(categories, "data category"),
            expires_ns=expires_ns,
            granted_ms=self._now_ms(),
        )
        signed = jws.sign(consent.payload(), self._key, signer=self._me, role="data_subject")
        self._audit.record(
            "consent.granted",
            parties=[recipient],
            data={
                "consent": consent.id,
                "recipient": recipient,
                "purposes": list(consent.purposes),
                "method": consent.method,
                "categories": list(consent.categories),
                "expires_ns": str(consent.expires_ns),
            },
        )
        with self._db.session() as s:
            s.add(
                ConsentRow(
                    id=consent.id,
                    recipient=recipient,
                    signed=signed,
                    expires_ns=expires_ns,
                    granted_ms=consent.granted_ms,
                )
            )
        return ConsentRecord(consent, signed)

    def withdraw(self, consent_id: str, reason: str = "") -> ConsentRecord:
        """Sign and record a withdrawal; the next decision sees it."""
        held = self.get(consent_id)
        if held.withdrawn:
            raise PreconditionFailed(f"consent {consent_id} is already withdrawn")
        now_ms = self._now_ms()
        body = canonical_json(
            {
                "tds_consent_withdrawal": 1,
                "consent": consent_id,
                "subject": self._me,
                "recipient": held.consent.recipient,
                "reason": reason.strip() or "withdrawn by the individual",
                "withdrawn_ms": now_ms,
            }
        )
        withdrawal = jws.sign(body, self._key, signer=self._me, role="data_subject")
        self._audit.record(
            "consent.withdrawn",
            parties=[held.consent.recipient],
            data={
                "consent": consent_id,
                "recipient": held.consent.recipient,
                "reason": reason.strip() or "withdrawn by the individual",
            },
        )
        with self._db.session() as s:
            row = s.exec(
                select(ConsentRow).where(ConsentRow.id == consent_id).with_for_update()
            ).one()
            if row.withdrawn_ms:  # a concurrent withdrawal won: the first one stands
                return _record(row)
            row.withdrawn_ms, row.withdrawal = now_ms, withdrawal
            s.add(row)
            s.flush()
            return _record(row)

    def get(self, consent_id: str) -> ConsentRecord:
        """One consent, or ``NotFound``."""
        with self._db.session() as s:
            row = s.get(ConsentRow, consent_id)
            if row is None:
                raise NotFound(f"consent {consent_id!r} not found")
            return _record(row)

    def list(self, recipient: str = "", *, include_withdrawn: bool = True) -> list[ConsentRecord]:
        """Consents, oldest first."""
        with self._db.session() as s:
            query = select(ConsentRow).order_by(col(ConsentRow.granted_ms), col(ConsentRow.id))
            if recipient:
                query = query.where(ConsentRow.recipient == recipient)
            if not include_withdrawn:
                query = query.where(ConsentRow.withdrawn_ms == 0)
            return [_record(r) for r in s.exec(query)]

    def lookup(self, recipient: str, product: str, purpose: str) -> dict[str, Any]:
        """The consent a decision about (recipient, product, purpose) must weigh.

        Among the recipient's consents covering the product, one in force for the purpose
        wins; otherwise the most telling refusal (withdrawn, expired, other purpose), so
        the policy's reason says what is wrong. None at all: ``present`` is false.

        Asked before every decision about a product (a transfer, each compute question),
        most often for a recipient who holds no consent at all: that is one plain read,
        before the product's tags or any consent is loaded.
        """
        with self._db.transaction() as tx:
            held = tx.one("SELECT 1 FROM consent WHERE recipient = ? LIMIT 1", (recipient,))
        if held is None:
            return {"present": False}
        try:
            tags = self._product_tags(product)
        except NotFound:
            return {"present": False}
        now_ns = int(self._clock.now() * 1_000_000_000)
        candidates = [r for r in self.list(recipient) if r.consent.covers(product, tags)]
        if not candidates:
            return {"present": False}

        def rank(r: ConsentRecord) -> tuple[bool, bool, bool, int]:
            live = not r.withdrawn and r.consent.expires_ns > now_ns
            return (
                live and purpose in r.consent.purposes,
                live,
                not r.withdrawn,
                r.consent.granted_ms,
            )

        return max(candidates, key=rank).context()

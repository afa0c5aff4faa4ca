"""Authorised-operation grants (公共数据授权运营), issued and revoked by the operator.

A grant lets one participant operate public data: the scope (product tags or domains) it
covers, the purposes it allows, its term (at most five years) and the body that granted
it. The operator signs each grant (JWS, Ed25519, canonical JSON), keeps it in its
database, and carries every unrevoked grant in the participant's membership tokens
(attribute ``tds_grants``), where the policy library reads them as ``subject.grants``.
A revoked grant leaves the next token the participant fetches and, at once, enters the
signed revocation list (``connector.registry.revocation``): providers learn of it from
there, not from tokens the holder refreshes when it likes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlmodel import col, select

from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.errors import InvalidRequest, NotFound, PreconditionFailed, VerificationError
from connector.identity.names import check_labels
from connector.policy.inputs import GRANTS_ATTRIBUTE
from connector.registry.revocation import RevokedGrant
from connector.store.database import Database
from connector.store.models import OperationGrantRow

__all__ = [
    "FIVE_YEARS_NS",
    "GRANTS_ATTRIBUTE",
    "Grant",
    "GrantRecord",
    "GrantStore",
    "grants_attribute",
    "new_grant",
    "sign_grant",
    "verify_grant",
]

# Five calendar years including two leap days: the same bound policies/tds/common.rego uses.
FIVE_YEARS_NS = ((5 * 365) + 2) * 86_400 * 10**9


@dataclass(frozen=True)
class Grant:
    """The terms of one grant, as signed and as carried in tokens."""

    id: str
    participant: str
    scope: tuple[str, ...]
    purposes: tuple[str, ...]
    start_ns: int
    end_ns: int
    body: str
    issued_ms: int

    def claims(self) -> dict[str, Any]:
        """The form policies see in ``subject.grants``."""
        return {
            "id": self.id,
            "scope": list(self.scope),
            "purposes": list(self.purposes),
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "body": self.body,
        }

    def payload(self) -> bytes:
        """Canonical JSON the operator signs (times as strings: I-JSON)."""
        doc = asdict(self)
        doc["scope"], doc["purposes"] = list(self.scope), list(self.purposes)
        doc["start_ns"], doc["end_ns"] = str(self.start_ns), str(self.end_ns)
        return canonical_json({"tds_operation_grant": 1, **doc})


@dataclass(frozen=True)
class GrantRecord:
    """A grant as the operator holds it: signed, perhaps revoked."""

    grant: Grant
    signed: str
    revoked_ms: int = 0
    revoked_reason: str = ""

    @property
    def revoked(self) -> bool:
        """Whether the operator revoked it."""
        return self.revoked_ms > 0


def new_grant(
    *,
    participant: str,
    scope: list[str],
    purposes: list[str],
    start_ns: int,
    end_ns: int,
    body: str,
    issued_ms: int,
) -> Grant:
    """Validated terms of a new grant; ``InvalidRequest`` says what to fix."""
    body = body.strip()
    if not 0 < len(body) <= 256:
        raise InvalidRequest("give the granting body (1-256 characters)")
    if start_ns < 0 or end_ns <= start_ns:
        raise InvalidRequest("the grant's end must be after its start")
    if end_ns - start_ns > FIVE_YEARS_NS:
        raise InvalidRequest("an authorised-operation grant runs at most 5 years: shorten its term")
    return Grant(
        id=f"gr-{uuid.uuid4().hex[:16]}",
        participant=participant,
        scope=check_labels(scope, "scope"),
        purposes=check_labels(purposes, "purpose"),
        start_ns=start_ns,
        end_ns=end_ns,
        body=body,
        issued_ms=issued_ms,
    )


def sign_grant(grant: Grant, operator: str, key: ed25519.Ed25519PrivateKey) -> str:
    """The operator's signed grant."""
    return jws.sign(grant.payload(), key, signer=operator, role="operator")


def verify_grant(signed: str, operator: str, keys: jws.KeyLookup) -> Grant:
    """Check the operator's signature and return the grant's terms."""
    jws.verify_signed(signed, keys, first=(operator, "operator"), what="operation grant")
    return _parse(signed)


def _parse(signed: str) -> Grant:
    payload = jws.payload_of(signed, "operation grant")
    if not isinstance(payload, dict) or payload.pop("tds_operation_grant", None) != 1:
        raise VerificationError("payload is not a tds operation grant")
    try:
        payload["scope"] = tuple(payload["scope"])
        payload["purposes"] = tuple(payload["purposes"])
        payload["start_ns"], payload["end_ns"] = int(payload["start_ns"]), int(payload["end_ns"])
        return Grant(**payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"operation grant has wrong fields: {exc}") from None


def grants_attribute(records: list[GrantRecord]) -> str:
    """The ``tds_grants`` token attribute: every unrevoked grant's claims."""
    return json.dumps([r.grant.claims() for r in records if not r.revoked], separators=(",", ":"))


def _record(row: OperationGrantRow) -> GrantRecord:
    return GrantRecord(
        grant=_parse(row.signed),
        signed=row.signed,
        revoked_ms=row.revoked_ms,
        revoked_reason=row.revoked_reason,
    )


class GrantStore:
    """The operator's grants, in its database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, grant: Grant, signed: str) -> GrantRecord:
        """Store a signed grant."""
        with self._db.session() as s:
            s.add(
                OperationGrantRow(
                    id=grant.id,
                    participant=grant.participant,
                    signed=signed,
                    start_ns=grant.start_ns,
                    end_ns=grant.end_ns,
                    issued_ms=grant.issued_ms,
                )
            )
        return GrantRecord(grant, signed)

    def get(self, grant_id: str) -> GrantRecord:
        """One grant, or ``NotFound``."""
        with self._db.session() as s:
            row = s.get(OperationGrantRow, grant_id)
            if row is None:
                raise NotFound(f"operation grant {grant_id!r} not found")
            return _record(row)

    def revoke(self, grant_id: str, reason: str, *, now_ms: int) -> GrantRecord:
        """Mark a grant revoked (once)."""
        with self._db.session() as s:
            row = s.exec(
                select(OperationGrantRow).where(OperationGrantRow.id == grant_id).with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"operation grant {grant_id!r} not found")
            if row.revoked_ms:
                raise PreconditionFailed(f"operation grant {grant_id!r} is already revoked")
            row.revoked_ms, row.revoked_reason = now_ms, reason
            s.add(row)
            s.flush()
            return _record(row)

    def revoked(self) -> frozenset[RevokedGrant]:
        """Every revoked grant, for the revocation list (revocations are never undone)."""
        with self._db.session() as s:
            rows = s.exec(
                select(
                    OperationGrantRow.id,
                    OperationGrantRow.participant,
                    OperationGrantRow.revoked_ms,
                ).where(OperationGrantRow.revoked_ms > 0)
            ).all()
            return frozenset(RevokedGrant(gid, pid, ms) for gid, pid, ms in rows)

    def list(self, participant: str = "", *, include_revoked: bool = False) -> list[GrantRecord]:
        """Grants, oldest first, optionally of one participant."""
        with self._db.session() as s:
            query = select(OperationGrantRow).order_by(
                col(OperationGrantRow.issued_ms), col(OperationGrantRow.id)
            )
            if participant:
                query = query.where(OperationGrantRow.participant == participant)
            if not include_revoked:
                query = query.where(OperationGrantRow.revoked_ms == 0)
            return [_record(r) for r in s.exec(query)]

"""The operator's participant directory and revocations, in the connector database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from connector.errors import ConflictError, NotFound, PreconditionFailed
from connector.registry.revocation import RevocationList
from connector.store.database import Database
from connector.store.models import ParticipantRow, RevokedCertificateRow

__all__ = ["DirectoryEntry", "DirectoryStore", "SqlDirectoryStore"]


@dataclass(frozen=True)
class DirectoryEntry:
    """One participant as the directory holds it."""

    id: str
    role: str
    address: str
    signing_public_key: bytes
    certificate_pem: str
    certificate_thumbprint: str
    certificate_serial: str
    attributes: dict[str, str] = field(default_factory=dict)
    enrolled_at: int = 0
    revoked: bool = False
    revoked_at: int | None = None
    revoked_reason: str | None = None


class DirectoryStore(Protocol):
    """Storage of the participant directory and revocation state."""

    def enrol(self, entry: DirectoryEntry, *, replace: bool, now: int) -> DirectoryEntry:
        """Add (or with ``replace``, update) a participant."""
        ...

    def get(self, participant_id: str) -> DirectoryEntry:
        """One participant, or ``NotFound``."""
        ...

    def list(self, role: str | None = None) -> list[DirectoryEntry]:
        """Participants ordered by id, optionally of one role."""
        ...

    def revoke(self, participant_id: str, reason: str, *, now: int) -> int:
        """Revoke a participant and its certificate; return the new list serial."""
        ...

    def revocations(self, *, now: int) -> RevocationList:
        """The revocation state as of ``now``."""
        ...


def _entry(row: ParticipantRow) -> DirectoryEntry:
    return DirectoryEntry(
        id=row.id,
        role=row.role,
        address=row.address,
        signing_public_key=bytes(row.signing_public_key),
        certificate_pem=row.certificate_pem,
        certificate_thumbprint=row.certificate_thumbprint,
        certificate_serial=row.certificate_serial,
        attributes=dict(row.attributes),
        enrolled_at=row.enrolled_at,
        revoked=row.revoked,
        revoked_at=row.revoked_at,
        revoked_reason=row.revoked_reason,
    )


class SqlDirectoryStore:
    """``DirectoryStore`` on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def enrol(self, entry: DirectoryEntry, *, replace: bool, now: int) -> DirectoryEntry:
        """Add a participant; with ``replace`` update it and revoke its previous certificate."""
        try:
            with self._db.session() as s:
                row = s.exec(
                    select(ParticipantRow).where(ParticipantRow.id == entry.id).with_for_update()
                ).first()
                if row is not None and not replace:
                    raise ConflictError(
                        f"participant {entry.id!r} is already enrolled; "
                        "pass replace to update its certificate or address"
                    )
                if row is not None and row.revoked:
                    raise PreconditionFailed(
                        f"participant {entry.id!r} is revoked; enrol it under a new id"
                    )
                if row is None:
                    row = ParticipantRow(
                        id=entry.id,
                        role=entry.role,
                        address=entry.address,
                        signing_public_key=entry.signing_public_key,
                        certificate_pem=entry.certificate_pem,
                        certificate_thumbprint=entry.certificate_thumbprint,
                        certificate_serial=entry.certificate_serial,
                        attributes=dict(entry.attributes),
                        enrolled_at=now,
                    )
                else:
                    if row.certificate_serial != entry.certificate_serial:
                        s.add(
                            RevokedCertificateRow(
                                serial=row.certificate_serial,
                                participant_id=row.id,
                                reason="replaced by a new certificate",
                                revoked_at=now,
                            )
                        )
                    row.role, row.address = entry.role, entry.address
                    row.signing_public_key = entry.signing_public_key
                    row.certificate_pem = entry.certificate_pem
                    row.certificate_thumbprint = entry.certificate_thumbprint
                    row.certificate_serial = entry.certificate_serial
                    row.attributes = dict(entry.attributes)
                if self._cert_revoked(s, entry.certificate_serial):
                    raise PreconditionFailed("that certificate has been revoked; issue a new one")
                s.add(row)
                s.flush()
                return _entry(row)
        except IntegrityError:
            # A concurrent enrol of the same id won the race.
            raise ConflictError(f"participant {entry.id!r} is already enrolled") from None

    @staticmethod
    def _cert_revoked(s: Session, serial: str) -> bool:
        return s.get(RevokedCertificateRow, serial) is not None

    def get(self, participant_id: str) -> DirectoryEntry:
        """One participant, or ``NotFound``."""
        with self._db.session() as s:
            row = s.get(ParticipantRow, participant_id)
            if row is None:
                raise NotFound(f"participant {participant_id!r} is not in the directory")
            return _entry(row)

    def list(self, role: str | None = None) -> list[DirectoryEntry]:
        """Participants ordered by id, optionally of one role."""
        with self._db.session() as s:
            query = select(ParticipantRow).order_by(ParticipantRow.id)
            if role:
                query = query.where(ParticipantRow.role == role)
            return [_entry(r) for r in s.exec(query)]

    def revoke(self, participant_id: str, reason: str, *, now: int) -> int:
        """Revoke a participant and its certificate; return the new list serial."""
        with self._db.session() as s:
            row = s.exec(
                select(ParticipantRow).where(ParticipantRow.id == participant_id).with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"participant {participant_id!r} is not in the directory")
            if row.revoked:
                raise PreconditionFailed(f"participant {participant_id!r} is already revoked")
            row.revoked, row.revoked_at, row.revoked_reason = True, now, reason
            s.add(row)
            if not self._cert_revoked(s, row.certificate_serial):
                s.add(
                    RevokedCertificateRow(
                        serial=row.certificate_serial,
                        participant_id=row.id,
                        reason=reason,
                        revoked_at=now,
                    )
                )
            s.flush()
            return self._serial(s)

    @staticmethod
    def _serial(s: Session) -> int:
        # Revocations are never undone, so counting them gives a monotonic serial.
        certs = s.exec(select(func.count()).select_from(RevokedCertificateRow)).one()
        parts = s.exec(
            select(func.count())
            .select_from(ParticipantRow)
            .where(
                ParticipantRow.revoked == True  # noqa: E712
            )
        ).one()
        return int(certs) + int(parts)

    def revocations(self, *, now: int) -> RevocationList:
        """The revocation state as of ``now``."""
        with self._db.session() as s:
            parts = s.exec(
                select(ParticipantRow.id).where(ParticipantRow.revoked == True)  # noqa: E712
            ).all()
            certs = s.exec(select(RevokedCertificateRow.serial)).all()
            return RevocationList(
                serial=self._serial(s),
                issued_at=now,
                participants=frozenset(parts),
                certificate_serials=frozenset(certs),
            )

"""SQLModel tables. Every change here needs a migration in ``migrations/versions``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, LargeBinary, Text
from sqlmodel import Field, SQLModel

__all__ = ["ParticipantRow", "RevokedCertificateRow"]


class ParticipantRow(SQLModel, table=True):
    """A participant in the operator's directory."""

    __tablename__ = "participant"

    id: str = Field(primary_key=True, max_length=63)
    role: str = Field(max_length=32)
    address: str = Field(default="", max_length=255)
    signing_public_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    certificate_pem: str = Field(sa_column=Column(Text, nullable=False))
    certificate_thumbprint: str = Field(max_length=64)
    certificate_serial: str = Field(max_length=64)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    enrolled_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked: bool = False
    revoked_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    revoked_reason: str | None = Field(default=None, max_length=1024)


class RevokedCertificateRow(SQLModel, table=True):
    """A certificate that must no longer be accepted (revocation or replacement)."""

    __tablename__ = "revoked_certificate"

    serial: str = Field(primary_key=True, max_length=64)
    participant_id: str = Field(max_length=63, index=True)
    reason: str = Field(max_length=1024)
    revoked_at: int = Field(sa_column=Column(BigInteger, nullable=False))

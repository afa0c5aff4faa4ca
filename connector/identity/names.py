"""Names of spaces, participants and roles, and how certificates carry them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from connector.errors import InvalidRequest

__all__ = [
    "ADMIN_URI_KIND",
    "PARTICIPANT_URI_KIND",
    "CertificateName",
    "Role",
    "admin_uri",
    "check_id",
    "check_labels",
    "parse_uri",
    "participant_dns_name",
    "participant_uri",
]

# A DNS label: participant ids also name the connector's TLS server identity.
_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
PARTICIPANT_URI_KIND = "participant"
ADMIN_URI_KIND = "admin"


class Role(StrEnum):
    """What a participant is in the space (DESIGN.md §2)."""

    OPERATOR = "operator"
    GOVERNMENT = "government"
    ENTERPRISE = "enterprise"
    INDIVIDUAL = "individual"
    AUDITOR = "auditor"

    @classmethod
    def parse(cls, value: str) -> Role:
        """Return the role named ``value`` or raise ``InvalidRequest`` listing the valid ones."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(r.value for r in cls)
            raise InvalidRequest(f"unknown role {value!r}: use one of {valid}") from None


LABEL = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
"""Purposes, scopes, tags and data categories: lower-case, digits, '.', '_', '-'."""


def check_labels(values: list[str], what: str, *, limit: int = 32) -> tuple[str, ...]:
    """Sorted, de-duplicated labels; ``InvalidRequest`` for none, too many or a bad one."""
    cleaned = tuple(sorted({v.strip() for v in values if v.strip()}))
    if not cleaned:
        raise InvalidRequest(f"give at least one {what}")
    if len(cleaned) > limit:
        raise InvalidRequest(f"at most {limit} {what} entries")
    for value in cleaned:
        if not LABEL.match(value):
            raise InvalidRequest(
                f"{what} {value!r}: use lower-case letters, digits, '.', '_' or '-' (max 63)"
            )
    return cleaned


def check_id(value: str, what: str = "participant id") -> str:
    """Return ``value`` if it is a valid space or participant id, else raise ``InvalidRequest``."""
    if not _ID.match(value):
        raise InvalidRequest(
            f"invalid {what} {value!r}: use 1-63 lower-case letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def participant_uri(space: str, participant: str) -> str:
    """The SAN URI naming a participant's TLS certificate."""
    return f"urn:tds:{check_id(space, 'space id')}:{PARTICIPANT_URI_KIND}:{check_id(participant)}"


def admin_uri(space: str, participant: str) -> str:
    """The SAN URI naming the administrator certificate of a participant's connector."""
    return f"urn:tds:{check_id(space, 'space id')}:{ADMIN_URI_KIND}:{check_id(participant)}"


def participant_dns_name(space: str, participant: str) -> str:
    """The DNS name a participant's server certificate carries and clients check.

    Clients set it as the TLS target name, so the TLS layer itself verifies that the
    server at an address from the directory really is the participant that was looked up.
    """
    return f"{check_id(participant)}.{check_id(space, 'space id')}.tds"


@dataclass(frozen=True)
class CertificateName:
    """What a certificate's tds SAN URI says: space, kind (participant or admin) and id."""

    space: str
    kind: str
    participant: str


def parse_uri(uri: str) -> CertificateName:
    """Parse a tds SAN URI or raise ``InvalidRequest``."""
    parts = uri.split(":")
    if (
        len(parts) != 5
        or parts[0] != "urn"
        or parts[1] != "tds"
        or parts[3] not in (PARTICIPANT_URI_KIND, ADMIN_URI_KIND)
    ):
        raise InvalidRequest(f"not a tds certificate name: {uri!r}")
    check_id(parts[2], "space id")
    check_id(parts[4])
    return CertificateName(space=parts[2], kind=parts[3], participant=parts[4])

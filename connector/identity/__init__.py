"""Identity: names, certificates, the development PKI and membership tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector import lazy
from connector.identity.names import Role, participant_dns_name, participant_uri

if TYPE_CHECKING:
    from connector.identity.tokens import (
        Membership,
        issue_membership_token,
        verify_membership_token,
    )

__all__ = [
    "Membership",
    "Role",
    "issue_membership_token",
    "participant_dns_name",
    "participant_uri",
    "verify_membership_token",
]

# The tokens bring PyJWT (about 0.1 s of a command's start); the names are needed by
# every command's configuration, the tokens only by what signs or checks one.
__getattr__ = lazy.exports(
    __name__,
    {
        "Membership": "tokens",
        "issue_membership_token": "tokens",
        "verify_membership_token": "tokens",
    },
)

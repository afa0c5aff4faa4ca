"""Identity: names, certificates, the development PKI and membership tokens."""

from connector.identity.names import Role, participant_dns_name, participant_uri
from connector.identity.tokens import Membership, issue_membership_token, verify_membership_token

__all__ = [
    "Membership",
    "Role",
    "issue_membership_token",
    "participant_dns_name",
    "participant_uri",
    "verify_membership_token",
]

"""Contract negotiation: Dataspace Protocol states, signed agreements."""

from connector.negotiation.agreement import Agreement, verify_agreement
from connector.negotiation.states import State

__all__ = ["Agreement", "State", "verify_agreement"]

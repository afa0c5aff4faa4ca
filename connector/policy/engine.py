"""The policy engine interface, and the one call the connector makes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from connector.policy.decision import Decision

__all__ = ["PolicyEngine"]


class PolicyEngine(Protocol):
    """Evaluates the tds policy set; never raises for engine trouble, it denies."""

    name: str

    @property
    def revision(self) -> str:
        """The revision of the policy set in force."""
        ...

    def decide(self, document: Mapping[str, Any]) -> Decision:
        """The decision for one input document (DESIGN §5)."""
        ...

    def close(self) -> None:
        """Release the engine's resources."""
        ...

"""Policy: every decision about data is a Rego decision; no decision means no data.

``PolicyEngine`` has two implementations behind one interface: ``EmbeddedEngine``
(regopy, the default) and ``OpaServerEngine`` (an OPA sidecar). Both return the same
``Decision`` and turn every failure into a deny with a reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector import lazy

if TYPE_CHECKING:
    from connector.policy.decision import Decision
    from connector.policy.embedded import EmbeddedEngine
    from connector.policy.engine import PolicyEngine
    from connector.policy.library import PolicySet, load_library
    from connector.policy.opa import OpaServerEngine

# Imported on first use: the engines bring regopy and the OPA client, which the CLI's
# client commands and the product descriptions (``shape``) do not need.
_WHERE = {
    "Decision": "decision",
    "EmbeddedEngine": "embedded",
    "OpaServerEngine": "opa",
    "PolicyEngine": "engine",
    "PolicySet": "library",
    "load_library": "library",
}

__all__ = [
    "Decision",
    "EmbeddedEngine",
    "OpaServerEngine",
    "PolicyEngine",
    "PolicySet",
    "load_library",
]


__getattr__ = lazy.exports(__name__, _WHERE)

"""Policy: every decision about data is a Rego decision; no decision means no data.

``PolicyEngine`` has two implementations behind one interface: ``EmbeddedEngine``
(regopy, the default) and ``OpaServerEngine`` (an OPA sidecar). Both return the same
``Decision`` and turn every failure into a deny with a reason.
"""

from connector.policy.decision import Decision
from connector.policy.embedded import EmbeddedEngine
from connector.policy.engine import PolicyEngine
from connector.policy.library import PolicySet, load_library
from connector.policy.opa import OpaServerEngine

__all__ = [
    "Decision",
    "EmbeddedEngine",
    "OpaServerEngine",
    "PolicyEngine",
    "PolicySet",
    "load_library",
]

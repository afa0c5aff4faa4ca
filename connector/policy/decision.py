"""The decision document every policy engine returns, and how a result becomes one.

Anything that is not a well-formed decision — an engine error, an undefined result, a
timeout, a malformed document — becomes a *deny* with a reason. Nothing here ever allows
on error.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ENGINE_DOWN",
    "ENGINE_ERROR",
    "ENGINE_TIMEOUT",
    "ENGINE_UNAVAILABLE",
    "INVALID_INPUT",
    "MALFORMED_DECISION",
    "UNDEFINED",
    "Decision",
    "input_digest",
    "parse_decision",
]

ENGINE_UNAVAILABLE = "engine_unavailable"
ENGINE_TIMEOUT = "engine_timeout"
ENGINE_ERROR = "engine_error"
UNDEFINED = "undefined"
MALFORMED_DECISION = "malformed_decision"
INVALID_INPUT = "invalid_input"

# Reasons that say the engine could not be asked, not what the policy says: the decision
# point logs the deny and raises Unavailable (see connector.policy.point).
ENGINE_DOWN = frozenset({ENGINE_UNAVAILABLE, ENGINE_TIMEOUT})


def input_digest(document: Any) -> str:
    """SHA-256 (hex) of the input as sorted-key compact JSON.

    Not RFC 8785: inputs carry nanosecond times beyond I-JSON's integer range, which this
    form keeps exact. Raises ``TypeError``/``ValueError`` for a document that is not JSON.
    """
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Decision:
    """A policy decision with its provenance."""

    allow: bool
    deny: tuple[str, ...]
    needs_approval: bool = False
    obligations: dict[str, Any] = field(default_factory=dict)
    permitted_fields: tuple[str, ...] | None = None
    masks: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    revision: str = ""
    """SHA-256 of the policy revision that decided."""
    input_sha256: str = ""
    engine: str = ""
    detail: str = ""
    """Why an engine failure became a deny (for logs; never shown to the other party)."""
    visible: bool | None = None
    """For a contract request: whether the access policy lets the subject see the resource
    (None when the policy does not say; a refusal never says)."""
    visible_ids: tuple[str, ...] | None = None
    """For a page of a catalog (``catalog.list``): the ids of the resources the subject may
    see, sorted (None for every other action, and for a refusal: nothing is visible)."""

    @classmethod
    def refuse(
        cls, reason: str, *, revision: str, input_sha256: str, engine: str, detail: str = ""
    ) -> Decision:
        """A deny for ``reason`` (the engine failed or the input was unusable)."""
        return cls(
            False,
            (reason,),
            revision=revision,
            input_sha256=input_sha256,
            engine=engine,
            detail=detail[:500],
        )

    def as_json(self) -> dict[str, Any]:
        """The decision document plus provenance, for logs and ``--json``."""
        return {
            "id": self.id,
            "allow": self.allow,
            "deny": list(self.deny),
            "needs_approval": self.needs_approval,
            "obligations": self.obligations,
            "permitted_fields": (
                list(self.permitted_fields) if self.permitted_fields is not None else None
            ),
            "masks": self.masks,
            "revision": self.revision,
            "input_sha256": self.input_sha256,
            "engine": self.engine,
            **({"detail": self.detail} if self.detail else {}),
            **({"visible": self.visible} if self.visible is not None else {}),
            **({"visible_ids": list(self.visible_ids)} if self.visible_ids is not None else {}),
        }


def _strings(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(sorted(set(value)))
    return None


def parse_decision(raw: Any, *, revision: str, input_sha256: str, engine: str) -> Decision:
    """Validate an engine's result as a decision document; a deny if it is not one."""

    def malformed(why: str) -> Decision:
        return Decision.refuse(
            MALFORMED_DECISION,
            revision=revision,
            input_sha256=input_sha256,
            engine=engine,
            detail=why,
        )

    if not isinstance(raw, dict):
        return malformed("the decision is not an object")
    allow, deny = raw.get("allow"), _strings(raw.get("deny", []))
    if not isinstance(allow, bool):
        return malformed("allow is not a boolean")
    if deny is None:
        return malformed("deny is not a list of strings")
    if allow and deny:
        return malformed("allow is true but deny reasons are given")
    if not allow and not deny:
        deny = ("denied",)
    needs_approval = raw.get("needs_approval", False)
    obligations, masks = raw.get("obligations", {}), raw.get("masks", {})
    permitted = raw.get("permitted_fields")
    fields = _strings(permitted) if permitted is not None else None
    visible = raw.get("visible")
    listed = raw.get("visible_ids")
    visible_ids = _strings(listed) if listed is not None else None
    if (
        not isinstance(needs_approval, bool)
        or not isinstance(obligations, dict)
        or not isinstance(masks, dict)
        or (permitted is not None and fields is None)
        or (visible is not None and not isinstance(visible, bool))
        or (listed is not None and visible_ids is None)
    ):
        return malformed(
            "needs_approval, obligations, permitted_fields, masks, visible or visible_ids has "
            "the wrong type"
        )
    if allow and visible is False:
        return malformed("allow is true for a resource the subject may not see")
    unknown = set(raw) - {
        "allow",
        "deny",
        "needs_approval",
        "obligations",
        "permitted_fields",
        "masks",
        "visible",
        "visible_ids",
    }
    if unknown:
        return malformed(f"unknown fields {sorted(unknown)}")
    return Decision(
        allow=allow,
        deny=deny,
        needs_approval=needs_approval,
        obligations=dict(obligations),
        permitted_fields=fields,
        masks=dict(masks),
        revision=revision,
        input_sha256=input_sha256,
        engine=engine,
        visible=visible,
        visible_ids=visible_ids if allow else None,
    )

"""The connector's policy decision point: decide, and record the decision as evidence."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from connector.audit.log import AuditLog, Record
from connector.errors import Unavailable
from connector.policy.decision import ENGINE_DOWN, Decision
from connector.policy.engine import PolicyEngine, evaluating
from connector.policy.engine import meanwhile as overlapping

__all__ = ["PolicyPoint"]


class PolicyPoint:
    """Every decision goes through here, so every decision is in the audit log.

    The entry (decision id, action, input hash, outcome, reasons, policy revision) is
    durable before the decision is returned; if it cannot be written, ``record`` raises
    ``Unavailable`` and the caller must not act.

    An engine that could not be asked (down, or past the deadline) decided nothing: the
    deny is logged like any other, and then ``decide`` raises ``Unavailable``, so that
    every caller answers "try again" rather than a refusal for good (a missing product,
    a terminated negotiation, a refused transfer).
    """

    def __init__(self, engine: PolicyEngine, audit: AuditLog) -> None:
        self.engine = engine
        self._audit = audit

    def prepare(self, key: str, items: list[Any]) -> list[Any]:
        """``items`` in the form the engine takes fastest as member ``key`` of a document
        decided later (the same content; see ``EngineBase.prepare``), or as they are for an
        engine without that step."""
        prepare = getattr(self.engine, "prepare", None)
        if prepare is None:
            return items
        prepared: list[Any] = prepare(key, items)
        return prepared

    def decide(
        self,
        document: Mapping[str, Any],
        *,
        defer: list[Record] | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> Decision:
        """Decide for ``document`` and log the decision.

        With ``defer``, the entry is added to it instead, for the caller to append with
        what the decision leads to, in one write, before it answers anyone.

        ``meanwhile``: called once, when the engine starts evaluating (the embedded engine
        then runs without the GIL: work started there runs beside it), or after the
        decision for an engine that does not say when.
        """
        overlapping(meanwhile)
        try:
            decision = self.engine.decide(document)
        finally:
            evaluating()  # if the engine did not
        subject = _section(document, "subject")
        resource = _section(document, "resource")
        parties = [p for p in (subject.get("id"), resource.get("owner")) if isinstance(p, str)]
        entry: Record = (
            "policy.decision",
            parties,
            {
                "decision": decision.id,
                "action": str(document.get("action", "")),
                "input_sha256": decision.input_sha256,
                "allow": decision.allow,
                "deny": list(decision.deny),
                "needs_approval": decision.needs_approval,
                "revision": decision.revision,
                "engine": decision.engine,
                "product": str(resource.get("id", "")),
                **({"visible": decision.visible} if decision.visible is not None else {}),
                **_page(document, decision),
            },
        )
        if defer is not None:
            defer.append(entry)
        else:
            self._audit.record_many([entry])
        down = ENGINE_DOWN.intersection(decision.deny)
        if down:
            raise Unavailable(
                f"the policy engine did not answer ({', '.join(sorted(down))}): nothing was "
                "decided or changed; try again once it is back"
            )
        return decision


def _section(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name)
    return value if isinstance(value, dict) else {}


def _page(document: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """For a page of a catalog: the ids decided and those the subject may see (the input
    hash covers the whole page)."""
    resources = document.get("resources")
    if document.get("action") != "catalog.list" or not isinstance(resources, list):
        return {}
    decided = [r.get("id") for r in resources if isinstance(r, dict)]
    return {
        "products": [i for i in decided if isinstance(i, str)],
        "visible_ids": list(decision.visible_ids or ()),
    }

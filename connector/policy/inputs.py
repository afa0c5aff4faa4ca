"""Building input documents (DESIGN §5) from what the connector itself knows.

``subject`` comes only from the verified caller (certificate + membership token); nothing a
request carries can reach it. Times are integer nanoseconds from the connector's clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from connector.clock import Clock
from connector.errors import InvalidRequest
from connector.rpc.auth import Caller

__all__ = ["ACTIONS", "build_input", "build_page_input", "subject_of"]

ACTIONS = (
    "catalog.read",
    "catalog.list",
    "contract.request",
    "transfer.start",
    "compute.run",
    "stream.continue",
)
GRANTS_ATTRIBUTE = "tds_grants"
"""Membership attribute holding the JSON list of authorised-operation grants."""


def subject_of(caller: Caller) -> dict[str, Any]:
    """The ``subject`` of a verified caller, grants decoded from its membership."""
    if caller.membership is None:
        raise InvalidRequest("policy decisions need a member caller")
    attrs = dict(caller.membership.attrs)
    grants: list[Any] = []
    if GRANTS_ATTRIBUTE in attrs:
        try:
            grants = json.loads(attrs.pop(GRANTS_ATTRIBUTE))
        except ValueError:
            grants = []  # an unreadable grant grants nothing
        if not isinstance(grants, list):
            grants = []
    return {
        "id": caller.participant,
        "role": caller.membership.role,
        "attrs": attrs,
        "grants": grants,
    }


def build_input(
    action: str,
    *,
    caller: Caller | None = None,
    subject: Mapping[str, Any] | None = None,
    resource: Mapping[str, Any],
    clock: Clock,
    offer: Mapping[str, Any] | None = None,
    contract: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    query: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The input document for one decision.

    The subject is that of ``caller``, or ``subject`` as ``subject_of`` gave it earlier for
    a verified caller (a decision taken again later, when the caller is not calling). With
    a caller, ``context.revoked_grants`` lists its grants the operator's revocation list
    revokes, which its token may still carry.
    """
    if action not in ACTIONS or action == "catalog.list":
        raise InvalidRequest(f"unknown policy action {action!r}")
    if (caller is None) == (subject is None):
        raise TypeError("build_input takes a caller or a subject, not both or neither")
    ctx = dict(context or {})
    ctx["now_ns"] = int(clock.now() * 1_000_000_000)
    if caller is not None:
        ctx["revoked_grants"] = sorted(caller.revoked_grants)
    document = {
        "action": action,
        "subject": subject_of(caller) if caller is not None else dict(subject or {}),
        "resource": dict(resource),
        "offer": dict(offer or {}),
        "contract": dict(contract or {}),
        "context": ctx,
    }
    if query is not None:
        # compute.run: the shape of the question (dimensions, measures and their
        # aggregates, filtered dimensions, ε asked), never its literal values.
        document["query"] = dict(query)
    return document


def build_page_input(
    caller: Caller,
    resources: Sequence[Mapping[str, Any]],
    *,
    clock: Clock,
    as_given: bool = False,
) -> dict[str, Any]:
    """The input document deciding a page of a catalog at once (``catalog.list``): which
    of ``resources`` ``caller`` may see.

    ``as_given``: ``resources`` is a list of fresh dicts made for this document (a list the
    engine prepared ahead, ``PolicyPoint.prepare``), taken as it is rather than copied.
    """
    return {
        "action": "catalog.list",
        "subject": subject_of(caller),
        "resources": resources if as_given else [dict(r) for r in resources],
        "context": {
            "now_ns": int(clock.now() * 1_000_000_000),
            "revoked_grants": sorted(caller.revoked_grants),
        },
    }

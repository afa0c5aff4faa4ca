"""A negotiation's transitions, as this connector's log recorded them.

Each transition is a ``negotiation.transition`` entry naming the counterparty (written with
the transition, in its transaction). A negotiation's entries lie between its creation and
its last change, so they are read from that time window by the log's (kind, time) index,
not from the whole log, and picked out by process id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from connector.audit.log import TransparencyLog
from connector.negotiation.store import Negotiation

__all__ = ["TRANSITION_KIND", "Transition", "transitions"]

TRANSITION_KIND = "negotiation.transition"
_SLACK_MS = 60_000
"""How far the log's clock may stand from the negotiation store's (replicas, slow commits)."""
_MOST = 10_000
"""Transition entries a window is read for at most."""


@dataclass(frozen=True)
class Transition:
    """One state change: from (empty for the creation), to, when, and its log entry."""

    start: str
    to: str
    time_ms: int
    log_index: int


def transitions(log: TransparencyLog, n: Negotiation) -> list[Transition]:
    """``n``'s transitions, oldest first."""
    found = log.entries_of_kind(
        TRANSITION_KIND,
        n.counterparty,
        n.created_ms - _SLACK_MS,
        n.updated_ms + _SLACK_MS,
        limit=_MOST,
    )
    moves = []
    for index, body in found:
        entry = json.loads(body)
        data = entry.get("data", {})
        if data.get("pid") != n.pid:
            continue
        moves.append(
            Transition(str(data.get("from", "")), str(data["to"]), entry["time_ms"], index)
        )
    return moves

"""Negotiation states and transitions of the Dataspace Protocol 2025-1."""

from __future__ import annotations

from enum import StrEnum

from connector.errors import PreconditionFailed

__all__ = ["FINAL", "TRANSITIONS", "State", "check_transition"]


class State(StrEnum):
    """A contract negotiation's state (DSP 2025-1 names, without the prefix)."""

    REQUESTED = "REQUESTED"
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    AGREED = "AGREED"
    VERIFIED = "VERIFIED"
    FINALIZED = "FINALIZED"
    TERMINATED = "TERMINATED"


FINAL = frozenset({State.FINALIZED, State.TERMINATED})

# REQUESTED -> OFFERED <-> REQUESTED, -> ACCEPTED -> AGREED -> VERIFIED -> FINALIZED;
# a provider may answer a request with an agreement at once (REQUESTED -> AGREED);
# TERMINATED from any state that is not final.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.REQUESTED: frozenset({State.OFFERED, State.AGREED, State.TERMINATED}),
    State.OFFERED: frozenset({State.REQUESTED, State.ACCEPTED, State.TERMINATED}),
    State.ACCEPTED: frozenset({State.AGREED, State.TERMINATED}),
    State.AGREED: frozenset({State.VERIFIED, State.TERMINATED}),
    State.VERIFIED: frozenset({State.FINALIZED, State.TERMINATED}),
    State.FINALIZED: frozenset(),
    State.TERMINATED: frozenset(),
}


def check_transition(current: State, new: State) -> None:
    """Raise ``PreconditionFailed`` unless ``current -> new`` is a protocol transition."""
    if new not in TRANSITIONS[current]:
        raise PreconditionFailed(
            f"a negotiation in state {current.value} cannot move to {new.value}"
            + (" (it is final)" if current in FINAL else "")
        )

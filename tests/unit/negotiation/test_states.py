"""The shared negotiation state machine (DSP 2025-1, contract negotiation states): every
allowed transition, and every other pair refused, counter-offers included."""

from __future__ import annotations

import itertools

import pytest

from connector.errors import PreconditionFailed
from connector.negotiation.states import FINAL, TRANSITIONS, State, check_transition

R, OF, AC, AG, V, F, T = (
    State.REQUESTED,
    State.OFFERED,
    State.ACCEPTED,
    State.AGREED,
    State.VERIFIED,
    State.FINALIZED,
    State.TERMINATED,
)
# Written out from the specification's state machine, not derived from TRANSITIONS:
# REQUESTED -> OFFERED (the provider's counter-offer) or AGREED; OFFERED -> REQUESTED
# (the consumer's counter-request) or ACCEPTED; ACCEPTED -> AGREED -> VERIFIED ->
# FINALIZED; TERMINATED from every state that is not final.
ALLOWED = {
    (R, OF),
    (R, AG),
    (OF, R),
    (OF, AC),
    (AC, AG),
    (AG, V),
    (V, F),
    *((s, T) for s in (R, OF, AC, AG, V)),
}
PAIRS = list(itertools.product(State, State))


@pytest.mark.parametrize(("current", "new"), sorted(ALLOWED), ids=lambda s: s.value)
def test_contract_negotiation_states_allowed(current: State, new: State) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"), [p for p in PAIRS if p not in ALLOWED], ids=lambda s: s.value
)
def test_contract_negotiation_states_refused(current: State, new: State) -> None:
    with pytest.raises(PreconditionFailed, match=f"{current.value} cannot move to {new.value}"):
        check_transition(current, new)


def test_the_table_is_the_specifications_and_final_states_go_nowhere() -> None:
    assert {(s, n) for s, nexts in TRANSITIONS.items() for n in nexts} == ALLOWED
    for state in FINAL:
        with pytest.raises(PreconditionFailed, match="it is final"):
            check_transition(state, T)

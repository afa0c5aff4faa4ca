"""Timelines drawn on the server as inline SVG: no script draws them, and every label is a
template value (escaped like any other text).

A negotiation's transitions often come milliseconds apart and sometimes days apart, so the
steps are evenly spaced and the time between two steps is written on the line joining them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Step", "Timeline", "elapsed", "timeline"]

WIDTH = 760
HEIGHT = 110
_MARGIN = 70
_COLOURS = {"FINALIZED": "#1c7c3c", "TERMINATED": "#a01616"}
_MOVING = "#2356a8"


@dataclass(frozen=True)
class Step:
    """One point on the line: a state reached, where, when, and how long after the last."""

    x: int
    state: str
    colour: str
    when: str
    after: str
    """The time since the step before ("" for the first)."""
    log_index: int


@dataclass(frozen=True)
class Timeline:
    """What the template draws."""

    width: int
    height: int
    axis_y: int
    first_x: int
    last_x: int
    steps: list[Step]


def elapsed(ms: int) -> str:
    """A duration as a person reads it, to the unit that matters."""
    if ms < 1000:
        return f"+{ms} ms"
    if ms < 60_000:
        return f"+{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"+{ms // 60_000} min"
    if ms < 86_400_000:
        return f"+{ms / 3_600_000:.1f} h"
    return f"+{ms / 86_400_000:.1f} d"


def timeline(transitions: list[dict[str, Any]]) -> Timeline | None:
    """The timeline of ``transitions`` (``to``, ``time_ms``, ``log_index``, oldest first),
    or None when there are none to draw."""
    if not transitions:
        return None
    span = WIDTH - 2 * _MARGIN
    count = len(transitions)
    steps = []
    for i, t in enumerate(transitions):
        x = _MARGIN + (span * i // (count - 1) if count > 1 else span // 2)
        before = transitions[i - 1]["time_ms"] if i else None
        steps.append(
            Step(
                x=x,
                state=t["to"],
                colour=_COLOURS.get(t["to"], _MOVING),
                when=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t["time_ms"] / 1000)),
                after=elapsed(max(0, t["time_ms"] - before)) if before is not None else "",
                log_index=t["log_index"],
            )
        )
    return Timeline(WIDTH, HEIGHT, 48, steps[0].x, steps[-1].x, steps)

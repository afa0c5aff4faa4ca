"""Timelines drawn on the server as inline SVG: no script draws them, and every label is a
template value (escaped like any other text).

A negotiation's transitions often come milliseconds apart and sometimes days apart, so the
steps are evenly spaced and the time between two steps is written on the line joining them.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DayChart",
    "GrowthChart",
    "Step",
    "Timeline",
    "day_chart",
    "elapsed",
    "growth_chart",
    "timeline",
]

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


# -- charts over time: transfers per day, a log's growth with its checkpoints ------------

CHART_WIDTH = 760
CHART_HEIGHT = 180
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 12, 34


@dataclass(frozen=True)
class Bar:
    """One day's column: its box, and what its tooltip and label say."""

    x: float
    y: float
    width: float
    height: float
    done_y: float
    """Top of the completed part (the bar is ``started``; completed is drawn over it)."""
    label: str
    title: str


@dataclass(frozen=True)
class Tick:
    """A label on an axis, at ``at`` (x for the time axis, y for the count axis)."""

    at: float
    text: str


@dataclass(frozen=True)
class DayChart:
    """Transfers per day, as the template draws them."""

    width: int
    height: int
    base_y: float
    bars: list[Bar]
    y_ticks: list[Tick]
    total: int


def _nice_top(largest: int) -> int:
    """A round number at or above ``largest`` for the count axis: 1, 2 or 5 times 10^n."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if top * step >= largest:
                return top * step
        top *= 10


def day_chart(days: list[dict[str, Any]]) -> DayChart:
    """Columns of transfers started per day (``day_ms``, ``started``, ``completed``,
    ``completed_bytes``; oldest first), completed ones darker, a label every week."""
    base_y = CHART_HEIGHT - _BOTTOM
    span_y = base_y - _TOP
    top = _nice_top(max((d["started"] for d in days), default=0))
    slot = (CHART_WIDTH - _LEFT - _RIGHT) / max(1, len(days))
    bars = []
    for i, d in enumerate(days):
        height = span_y * d["started"] / top
        done = span_y * d["completed"] / top
        day = time.strftime("%Y-%m-%d", time.gmtime(d["day_ms"] / 1000))
        bars.append(
            Bar(
                x=round(_LEFT + i * slot + 1, 1),
                y=round(base_y - height, 1),
                width=round(max(1.0, slot - 2), 1),
                height=round(height, 1),
                done_y=round(base_y - done, 1),
                label=day[5:] if i % 7 == (len(days) - 1) % 7 else "",
                title=f"{day}: {d['started']} started, {d['completed']} completed "
                f"({d['completed_bytes']} B)",
            )
        )
    ticks = [Tick(round(base_y - span_y * k / 2, 1), f"{top * k // 2}") for k in (0, 1, 2)]
    return DayChart(CHART_WIDTH, CHART_HEIGHT, base_y, bars, ticks, sum(d["started"] for d in days))


@dataclass(frozen=True)
class Mark:
    """A checkpoint on the growth line: where, its size, who signed it."""

    x: float
    y: float
    size: int
    cosigned: bool
    title: str


@dataclass(frozen=True)
class GrowthChart:
    """A log's size over time, with its checkpoints on the line."""

    width: int
    height: int
    base_y: float
    points: str
    """The line's points as the ``points`` attribute of an SVG polyline."""
    marks: list[Mark]
    x_ticks: list[Tick]
    y_ticks: list[Tick]


def growth_chart(
    samples: list[tuple[int, int]], checkpoints: list[dict[str, Any]]
) -> GrowthChart | None:
    """The log's growth from ``samples`` ((time_ms, entries so far), in log order) and its
    ``checkpoints`` (``size``, ``signers``) placed on the line by size, the time a
    checkpoint's size was reached read off the line between the samples around it. None
    with fewer than two samples at different times (nothing to draw a line through)."""
    samples = sorted(set(samples), key=lambda s: (s[1], s[0]))
    if len(samples) < 2 or samples[0][0] == samples[-1][0]:
        return None
    # Stamps may step back a little (appenders stamp, then queue): time never goes back.
    steady: list[tuple[int, int]] = []
    for ms, count in samples:
        steady.append((max(ms, steady[-1][0]) if steady else ms, count))
    t0, t1 = steady[0][0], steady[-1][0]
    top = _nice_top(steady[-1][1])
    base_y = CHART_HEIGHT - _BOTTOM
    span_x, span_y = CHART_WIDTH - _LEFT - _RIGHT, base_y - _TOP

    def xy(ms: float, count: int) -> tuple[float, float]:
        return (
            round(_LEFT + span_x * (ms - t0) / (t1 - t0), 1),
            round(base_y - span_y * count / top, 1),
        )

    def when(count: int) -> float:
        for (ma, ca), (mb, cb) in itertools.pairwise(steady):
            if ca <= count <= cb:
                return ma + (mb - ma) * ((count - ca) / (cb - ca) if cb > ca else 0)
        return float(t1 if count > steady[-1][1] else t0)

    marks = []
    for c in checkpoints:
        x, y = xy(when(c["size"]), c["size"])
        cosigned = len(c["signers"]) > 1
        marks.append(Mark(x, y, c["size"], cosigned, f"{c['size']}: {', '.join(c['signers'])}"))
    fmt = "%m-%d %H:%M" if t1 - t0 < 3 * 86_400_000 else "%Y-%m-%d"
    x_ticks = [
        Tick(xy(ms, 0)[0], time.strftime(fmt, time.gmtime(ms / 1000)))
        for ms in (t0, (t0 + t1) / 2, t1)
    ]
    y_ticks = [Tick(xy(t0, top * k // 2)[1], f"{top * k // 2}") for k in (0, 1, 2)]
    points = " ".join("{},{}".format(*xy(ms, count)) for ms, count in steady)
    return GrowthChart(CHART_WIDTH, CHART_HEIGHT, base_y, points, marks, x_ticks, y_ticks)

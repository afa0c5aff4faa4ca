"""How the console words durations: the time between a negotiation's steps, and the time
left before a holding must be deleted."""

from __future__ import annotations

from connector.console.app import countdown
from connector.console.timeline import elapsed, timeline


def test_elapsed_picks_the_unit_that_matters() -> None:
    assert elapsed(0) == "+0 ms"
    assert elapsed(999) == "+999 ms"
    assert elapsed(1_500) == "+1.5 s"
    assert elapsed(5 * 60_000 + 59_000) == "+5 min"
    assert elapsed(90 * 60_000) == "+1.5 h"
    assert elapsed(3 * 86_400_000) == "+3.0 d"


def test_countdown_says_days_then_hours_and_when_it_is_due() -> None:
    day, hour, minute = 86_400_000, 3_600_000, 60_000
    assert countdown(2 * day + 23 * hour + 59 * minute) == "还剩 2 天 23 小时 / 2 d 23 h left"
    assert countdown(5 * hour + 7 * minute) == "还剩 5 小时 7 分 / 5 h 7 min left"
    assert countdown(0) == countdown(-1) == "已到期 / due now"


def test_a_timeline_spaces_steps_evenly_whatever_the_times() -> None:
    moves = [
        {"to": "REQUESTED", "time_ms": 0, "log_index": 3},
        {"to": "AGREED", "time_ms": 5, "log_index": 4},
        {"to": "TERMINATED", "time_ms": 2 * 86_400_000, "log_index": 9},
    ]
    drawn = timeline(moves)
    assert drawn is not None
    xs = [s.x for s in drawn.steps]
    assert xs[1] - xs[0] == xs[2] - xs[1] > 0
    assert [s.after for s in drawn.steps] == ["", "+5 ms", "+2.0 d"]
    assert drawn.steps[-1].colour != drawn.steps[0].colour  # an end looks like one
    assert timeline([]) is None
    [only] = timeline(moves[:1]).steps  # type: ignore[union-attr]
    assert only.x == drawn.width // 2

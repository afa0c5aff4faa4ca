"""The connector bounds glibc's malloc arenas, unless the operator already did."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from connector.node.memory import bound_malloc_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_arenas_are_bounded_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert bound_malloc_arenas(2) is True


def test_an_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert bound_malloc_arenas(2) is False


_FREEZE_CHECK = """
import gc, weakref
from connector.node.memory import freeze_startup_objects

class Cycle:
    pass

def cycle():
    a, b = Cycle(), Cycle()
    a.other, b.other = b, a
    return weakref.ref(a)

before = cycle()  # garbage left by startup: collected, not frozen
kept = Cycle()
frozen = freeze_startup_objects()
after = cycle()  # garbage made while serving: full collections still find it
gc.collect()
print(frozen > 1000, before() is None, after() is None, gc.get_freeze_count() == frozen)
"""


def test_startup_objects_are_frozen_and_later_garbage_still_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FREEZE_CHECK], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["True", "True", "True", "True"]

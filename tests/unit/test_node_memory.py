"""The connector bounds glibc's malloc arenas and keeps chunk buffers, unless the operator
already set either."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from connector.node.memory import bound_malloc_arenas, keep_chunk_buffers

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")


@glibc_only
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


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operators_malloc_thresholds_win(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "1048576")
    assert keep_chunk_buffers() is False


_CHURN = textwrap.dedent(
    """
    import resource, sys
    from connector.node.memory import keep_chunk_buffers
    kept = keep_chunk_buffers()

    def chunk():  # what a sender allocates for one chunk: the bytes read, the message, a copy
        a = b"a" * (1 << 20)
        b = b"b" * (1 << 20) + b"x"
        c = b"c" * ((1 << 20) + 100)
        del a, b, c

    for _ in range(20):
        chunk()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        chunk()
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@glibc_only
def test_chunk_buffers_are_reused_not_faulted_in_anew() -> None:
    """200 chunks' worth of megabyte buffers, allocated and freed as a sender does: with
    the thresholds glibc moves itself, each chunk's memory went back to the system and was
    faulted in again (about 200,000 faults here); kept, almost none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _CHURN], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) < 10_000, f"{out[1]} page faults for 200 chunks"

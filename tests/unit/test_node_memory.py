"""The connector bounds glibc's malloc arenas, unless the operator already did."""

from __future__ import annotations

import platform

import pytest

from connector.node.memory import bound_malloc_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_arenas_are_bounded_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert bound_malloc_arenas(2) is True


def test_an_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert bound_malloc_arenas(2) is False

"""Keep a long-running connector's memory flat under glibc's allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["bound_malloc_arenas"]

_M_ARENA_MAX = -8  # from glibc's malloc.h


def bound_malloc_arenas(arenas: int = 2) -> bool:
    """Limit glibc malloc to ``arenas`` arenas; True if the limit is in force.

    glibc gives threads that contend for malloc arenas of their own (up to eight per
    core), and a freed block goes back to the arena it came from. During a transfer gRPC's
    threads and ours allocate and free megabyte chunk buffers across many arenas, which
    keep the freed memory: measured on a 1 GiB pull, the consumer grew from 134 to 412 MB
    resident with nothing live to show for it, and stayed under 180 MB with two arenas at
    the same throughput. Call it before threads start. ``MALLOC_ARENA_MAX`` in the
    environment, when an operator sets it, wins. Elsewhere than glibc this does nothing.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only; raises AttributeError elsewhere
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))

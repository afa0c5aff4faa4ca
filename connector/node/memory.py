"""Keep a long-running connector's memory flat under glibc's allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

__all__ = [
    "CHUNK_BUFFER_MMAP_THRESHOLD",
    "bound_malloc_arenas",
    "freeze_startup_objects",
    "keep_chunk_buffers",
]

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

CHUNK_BUFFER_MMAP_THRESHOLD = 8 * 1024 * 1024
"""Allocations below this come from the arenas (a transfer's chunk buffers among them)."""

CHUNK_BUFFER_TRIM_THRESHOLD = 8 * 1024 * 1024
"""Free memory an arena keeps at its top before giving it back to the system."""


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only; raises AttributeError elsewhere
    except (OSError, AttributeError):
        return None
    return libc


def bound_malloc_arenas(arenas: int = 1) -> bool:
    """Limit glibc malloc to ``arenas`` arenas; True if the limit is in force.

    glibc gives threads that contend for malloc arenas of their own (up to eight per
    core), and a freed block goes back to the arena it came from. During a transfer gRPC's
    threads and ours allocate and free megabyte chunk buffers across many arenas, which
    keep the freed memory: measured on a 1 GiB pull, the consumer grew from 134 to 412 MB
    resident with nothing live to show for it, and stayed under 180 MB with two arenas at
    the same throughput. With two, the consumer's connector (grown since to 170 MB idle)
    peaked at 200-202 MB during a pull; with one, at 187-194, with no more CPU a GiB and
    no slower pull in the same rounds (bench/transfer.py, load 11). Call it before
    threads start. ``MALLOC_ARENA_MAX`` in the environment, when an operator sets it,
    wins. Elsewhere than glibc this does nothing.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, arenas))


def keep_chunk_buffers() -> bool:
    """Fix glibc's mmap and trim thresholds so that a transfer's megabyte chunk buffers
    are reused from the arenas; True if both are in force.

    By default glibc moves both thresholds as a process runs: a freed block larger than
    the mmap threshold raises it, and the trim threshold follows at twice that. A sending
    connector allocates a few blocks of about a chunk for every chunk (the bytes read,
    the encoded message, gRPC's copy of it) and frees them once sent; with the thresholds
    where that left them the freed top of the heap went back to the system after every
    chunk and the next chunk touched fresh pages again. Measured on 1 GiB pulls, the
    provider took up to 245,000 page faults a pull (every byte sent, faulted in anew), a
    third of its sending thread's CPU, in the kernel clearing pages; with the thresholds
    fixed, a few hundred. An arena keeps at most ``CHUNK_BUFFER_TRIM_THRESHOLD`` free at
    its top, so memory stays bounded. ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` in the environment, when an operator sets either, wins.
    Call it before threads start. Elsewhere than glibc this does nothing.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    mmap = bool(libc.mallopt(_M_MMAP_THRESHOLD, CHUNK_BUFFER_MMAP_THRESHOLD))
    trim = bool(libc.mallopt(_M_TRIM_THRESHOLD, CHUNK_BUFFER_TRIM_THRESHOLD))
    return mmap and trim


def freeze_startup_objects() -> int:
    """Leave the objects a started connector holds out of Python's full garbage
    collections (``gc.freeze``); how many were set aside.

    A started connector holds some 150,000-190,000 objects that live as long as the
    process (modules, functions, types, the server's stack), and every full collection
    walks them all. A catalog page allocates thousands of short-lived objects, which set
    off three full collections per 10,000 products listed: about 0.3 s of the provider's
    CPU (of some 3 s) measured in thread time, against under 0.01 s with those objects set
    aside. Frozen objects are still freed when nothing refers to them; only a reference
    cycle among them would outlive its use, and they are the process's own lasting state.
    Call it once the connector has started.
    """
    gc.collect()  # what startup left as garbage goes now, not frozen with the rest
    gc.freeze()
    return gc.get_freeze_count()

"""A pull's chunks are read ahead on a thread of their own: in order, bounded, errors in
their place, and nothing left running when the consumer goes away."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from connector.errors import PermissionDenied
from connector.transfer.provider import read_ahead


def _source(n: int, produced: list[int], closed: threading.Event) -> Iterator[bytes]:
    try:
        for i in range(n):
            produced.append(i)
            yield str(i).encode()
    finally:
        closed.set()


def test_items_come_in_order_and_the_source_is_closed() -> None:
    produced: list[int] = []
    closed = threading.Event()
    assert list(read_ahead(_source(50, produced, closed), 2)) == [
        str(i).encode() for i in range(50)
    ]
    assert closed.wait(2)


def test_an_error_comes_after_the_items_before_it() -> None:
    def failing() -> Iterator[bytes]:
        yield b"a"
        yield b"b"
        raise PermissionDenied("transfer tr-1 stopped: agreement_revoked")

    got = []
    with pytest.raises(PermissionDenied, match="agreement_revoked"):
        for item in read_ahead(failing(), 2):
            got.append(item)
    assert got == [b"a", b"b"]


def test_it_reads_at_most_depth_ahead_and_stops_when_the_caller_does() -> None:
    produced: list[int] = []
    closed = threading.Event()
    before = set(threading.enumerate())
    stream = read_ahead(_source(1000, produced, closed), 2)
    assert next(stream) == b"0"
    (reader,) = [t for t in threading.enumerate() if t not in before]
    time.sleep(0.3)
    # One taken, two waiting, one in the producer's hands: never the whole source.
    assert len(produced) <= 4
    stream.close()  # the consumer went away
    assert closed.wait(2), "the source was not closed"
    time.sleep(0.3)
    assert len(produced) <= 4
    reader.join(2)
    assert not reader.is_alive()

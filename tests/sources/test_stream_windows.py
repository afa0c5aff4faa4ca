"""The stream's hash chain, windows and the consumer's integrity checks (pure)."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace
from typing import Any

import pytest
import rfc8785

from connector.errors import ConfigError, VerificationError
from connector.sources.stream import DeliveryCursor, SkipReason, decode_message
from connector.sources.windows import (
    HashChain,
    StreamChecker,
    Window,
    WindowAccumulator,
    genesis_head,
)

FIELDS = ("station", "mm")


def _records(n: int, start: int = 1, step: int = 1) -> list[tuple[int, dict[str, Any]]]:
    return [(start + i * step, {"station": f"s{i % 3}", "mm": i / 10}) for i in range(n)]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_chain_encoding_is_the_documented_one() -> None:
    """A known-answer check of the encoding in the module docstring, built by hand."""
    genesis = hashlib.sha256(b"tds.stream.chain.genesis.v1\x00agr-1").digest()
    assert genesis_head("agr-1") == genesis
    record = {"mm": 1.5, "station": "Nord ü"}
    canonical = '{"mm":1.5,"station":"Nord ü"}'.encode()
    expected = hashlib.sha256(
        b"tds.stream.chain.link.v1\x00" + genesis + (7).to_bytes(8, "big") + canonical
    ).digest()
    chain = HashChain(genesis)
    # Key order of the delivered object does not matter: the encoding is canonical.
    assert chain.append(7, {"station": "Nord ü", "mm": 1.5}) == len(canonical)
    assert chain.head == expected
    assert HashChain(genesis).append(7, record) == len(canonical)


def test_chain_depends_on_sequence_record_and_context() -> None:
    def head(context: str, seq: int, record: dict[str, Any]) -> bytes:
        chain = HashChain(genesis_head(context))
        chain.append(seq, record)
        return chain.head

    base = head("a", 1, {"mm": 1})
    assert head("b", 1, {"mm": 1}) != base
    assert head("a", 2, {"mm": 1}) != base
    assert head("a", 1, {"mm": 2}) != base
    assert head("a", 1, {"mm": 1, "x": None}) != base


def test_chain_refuses_out_of_order_appends() -> None:
    chain = HashChain(genesis_head("a"))
    chain.append(5, {})
    with pytest.raises(ValueError, match="does not follow"):
        chain.append(5, {})
    with pytest.raises(ValueError, match="does not follow"):
        chain.append(4, {})


def _provider_windows(
    records: list[tuple[int, dict[str, Any]]], every: int, *, seconds: float = 60.0
) -> list[Window]:
    acc = WindowAccumulator(
        HashChain(genesis_head("agr")), every_messages=every, every_seconds=seconds
    )
    windows = [w for seq, rec in records if (w := acc.add(seq, rec))]
    if last := acc.flush():
        windows.append(last)
    return windows


def test_windows_every_n_messages_link_and_match_the_consumer() -> None:
    records = _records(25, start=10, step=3)  # sparse sequences, as JetStream gives
    windows = _provider_windows(records, every=10)
    assert [(w.index, w.count) for w in windows] == [(0, 10), (1, 10), (2, 5)]
    assert windows[0].first_sequence == 10 and windows[0].last_sequence == 10 + 9 * 3
    assert windows[0].start_head == genesis_head("agr").hex()
    for before, after in itertools.pairwise(windows):
        assert after.start_head == before.head
        assert after.first_sequence > before.last_sequence
    # JCS writes 0.0 as 0 and 1.0 as 1: the reference implementation, not json.dumps.
    assert sum(w.bytes for w in windows) == sum(len(rfc8785.dumps(r)) for _, r in records)
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    previous = 0
    confirmed = []
    for seq, rec in records:
        checker.accept(seq, previous, rec)
        previous = seq
        if seq == windows[len(confirmed)].last_sequence:
            confirmed.append(checker.confirm(windows[len(confirmed)]))
    assert confirmed == windows


def test_linking_the_sent_encoding_is_appending_the_record() -> None:
    """The provider links the canonical bytes it sends (one encoding per record); the
    consumer appends the object it parsed: the same chain, the same windows."""
    records = _records(12, start=3, step=2)
    sent = WindowAccumulator(HashChain(genesis_head("agr")), every_messages=5, every_seconds=9)
    parsed = WindowAccumulator(HashChain(genesis_head("agr")), every_messages=5, every_seconds=9)
    rooms = []
    for seq, rec in records:
        rooms.append(sent.room)
        assert sent.add_encoded(seq, rfc8785.dumps(rec)) == parsed.add(seq, rec)
    assert rooms == [5, 4, 3, 2, 1] * 2 + [5, 4]  # what the open window takes before it closes
    assert sent.chain.head == parsed.chain.head
    with pytest.raises(ValueError, match="does not follow"):
        sent.chain.link(records[-1][0], b"{}")


def test_window_closes_after_t_seconds_of_its_first_record() -> None:
    clock = _Clock()
    acc = WindowAccumulator(
        HashChain(genesis_head("agr")), every_messages=1000, every_seconds=2.0, clock=clock
    )
    assert acc.tick() is None  # nothing open
    assert acc.add(1, {"mm": 1}) is None
    clock.now += 1.9
    assert acc.add(2, {"mm": 2}) is None
    assert acc.tick() is None
    clock.now += 0.1
    window = acc.tick()
    assert window is not None and (window.first_sequence, window.last_sequence) == (1, 2)
    assert acc.tick() is None
    assert acc.flush() is None


def test_window_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        WindowAccumulator(HashChain(genesis_head("a")), every_messages=0, every_seconds=1)
    with pytest.raises(ConfigError):
        WindowAccumulator(HashChain(genesis_head("a")), every_messages=1, every_seconds=0)


@pytest.mark.parametrize(
    ("sequence", "previous", "fault"),
    [
        (3, 2, "received twice"),  # repeat of the last
        (2, 1, "reordered or repeated"),  # an older one again
        (5, 4, "gap"),  # 4 never arrived
        (6, 5, "gap"),
        (5, 2, "reordered or repeated"),  # claims to follow an earlier one
        (4, 4, "malformed"),  # follows itself
        (4, 7, "malformed"),
    ],
)
def test_checker_refuses_gaps_repeats_and_reordering(
    sequence: int, previous: int, fault: str
) -> None:
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    for seq, prev in ((1, 0), (2, 1), (3, 2)):
        checker.accept(seq, prev, {"mm": seq})
    head = checker.chain.head
    with pytest.raises(VerificationError, match=fault):
        checker.accept(sequence, previous, {"mm": 0})
    # Refused records change nothing: the next right one is still accepted.
    assert checker.chain.head == head and checker.last_sequence == 3
    checker.accept(4, 3, {"mm": 4})


def test_checker_resumes_from_what_it_holds() -> None:
    records = _records(6)
    windows = _provider_windows(records, every=3)
    first = StreamChecker(after=0, head=genesis_head("agr"))
    for seq, rec in records[:3]:
        first.accept(seq, seq - 1, rec)
    assert first.confirm(windows[0]) == windows[0]
    # The consumer restarts with (last sequence, head, next window) it kept.
    again = StreamChecker(after=3, head=bytes.fromhex(windows[0].head), next_index=1)
    for seq, rec in records[3:]:
        again.accept(seq, seq - 1, rec)
    assert again.confirm(windows[1]) == windows[1]


@pytest.mark.parametrize(
    "change",
    [
        {"count": 2},
        {"bytes": 1},
        {"last_sequence": 2},
        {"head": "00" * 32},
        {"start_head": "11" * 32},
        {"index": 5},
    ],
)
def test_checker_refuses_a_tampered_window(change: dict[str, Any]) -> None:
    records = _records(3)
    (window,) = _provider_windows(records, every=3)
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    for seq, rec in records:
        checker.accept(seq, seq - 1, rec)
    with pytest.raises(VerificationError, match="does not match"):
        checker.confirm(replace(window, **change))


def test_checker_refuses_a_replayed_window() -> None:
    records = _records(6)
    windows = _provider_windows(records, every=3)
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    for seq, rec in records[:3]:
        checker.accept(seq, seq - 1, rec)
    checker.confirm(windows[0])
    with pytest.raises(VerificationError, match="no record"):
        checker.confirm(windows[0])
    for seq, rec in records[3:]:
        checker.accept(seq, seq - 1, rec)
    with pytest.raises(VerificationError, match="does not match"):
        checker.confirm(windows[0])
    assert checker.confirm(windows[1]) == windows[1]


def test_a_record_the_provider_altered_changes_the_window() -> None:
    records = _records(3)
    (window,) = _provider_windows(records, every=3)
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    for seq, rec in records:
        checker.accept(seq, seq - 1, {**rec, "mm": 99} if seq == 2 else rec)
    with pytest.raises(VerificationError, match="head differ"):
        checker.confirm(window)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", SkipReason.NOT_JSON),
        (b"\xff\xfe{", SkipReason.NOT_JSON),
        ('{"mm": 1}'.encode("utf-16"), SkipReason.NOT_JSON),  # JSON, but not UTF-8
        (b'\xef\xbb\xbf{"mm": 1}', SkipReason.NOT_JSON),  # a byte order mark
        (b'{"mm": NaN}', SkipReason.NOT_JSON),
        (b'{"mm": 1e400}', SkipReason.NOT_JSON),
        (b'{"mm": 9007199254740992}', SkipReason.NOT_JSON),
        (b"[1, 2]", SkipReason.NOT_OBJECT),
        (b'"text"', SkipReason.NOT_OBJECT),
        (b"[" * 100_000, SkipReason.NOT_JSON),  # deeper than the parser recurses
        (b'{"station": "' + b"x" * 200 + b'"}', SkipReason.OVERSIZED),
    ],
)
def test_bad_messages_are_named(payload: bytes, reason: SkipReason) -> None:
    limit = 128 if reason is SkipReason.OVERSIZED else 1_000_000
    assert decode_message(payload, FIELDS, max_message_bytes=limit) == reason


def test_good_message_is_a_row_of_the_fields() -> None:
    row = decode_message(b'{"mm": 2.5, "other": 1}', FIELDS, max_message_bytes=128)
    assert isinstance(row, tuple) and row[1] == 2.5
    from connector.sources.base import MISSING

    assert row[0] is MISSING


def test_a_missing_field_is_left_out_of_the_delivered_object() -> None:
    from connector.sources.base import MISSING
    from connector.sources.stream import as_object

    assert as_object(FIELDS, ("a", MISSING)) == {"station": "a"}
    assert as_object(FIELDS, (None, 1)) == {"station": None, "mm": 1}


def test_cursor_links_records_over_skips() -> None:
    seen: list[tuple[int, SkipReason]] = []
    cursor = DeliveryCursor(after=4, on_skip=lambda s, r: seen.append((s, r)))
    first = cursor.deliver(5, ("a", 1), 10)
    cursor.skip(6, SkipReason.NOT_JSON)
    second = cursor.deliver(9, ("b", 2), 10)
    assert (first.previous, second.previous) == (4, 5)
    assert seen == [(6, SkipReason.NOT_JSON)] and cursor.skipped == {"not_json": 1}
    with pytest.raises(RuntimeError):
        cursor.deliver(9, ("c", 3), 10)

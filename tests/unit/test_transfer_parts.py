"""The consumer's chunk checks and the provider's field masks."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from connector.errors import InvalidRequest, Unavailable, VerificationError
from connector.identifiers import (
    AGREEMENT_ID,
    DECISION_ID,
    TRANSFER_ID,
    check_format,
    contained,
    printable,
)
from connector.policy.decision import Decision
from connector.transfer.holdings import holding_path
from connector.transfer.masking import Masker, agreement_mask_key, normalise_masks
from connector.transfer.receiving import Assembler


def test_chunks_must_arrive_in_order_within_size(tmp_path: Path) -> None:
    asm = Assembler(tmp_path / "x.part", size=10, chunk_size=4)
    asm.add(0, b"abcd")
    with pytest.raises(VerificationError, match="gap"):
        asm.add(5, b"f")
    with pytest.raises(VerificationError, match="overlap"):
        asm.add(2, b"cd")
    with pytest.raises(VerificationError, match="larger than"):
        asm.add(4, b"efghi")
    asm.add(4, b"efgh")
    with pytest.raises(VerificationError, match="past"):
        asm.add(8, b"ijk")
    asm.add(8, b"ij")
    asm.finish(hashlib.sha256(b"abcdefghij").hexdigest())
    asm.close()
    assert (tmp_path / "x.part").read_bytes() == b"abcdefghij"


def test_a_resumed_partial_file_is_hashed_whole(tmp_path: Path) -> None:
    path = tmp_path / "y.part"
    first = Assembler(path, size=6, chunk_size=3)
    first.add(0, b"abc")
    first.close()
    again = Assembler(path, size=6, chunk_size=3)
    assert again.received == 3
    again.add(3, b"def")
    again.finish(hashlib.sha256(b"abcdef").hexdigest())
    again.close()


def _refuse_direct_io(monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """Act as a filesystem that refuses O_DIRECT (EINVAL) at open or at the first write."""
    real_open, real_pwrite, real_close = os.open, os.pwrite, os.close
    direct_fds: set[int] = set()

    def fake_open(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECT and when == "open":
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags, *args)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def fake_pwrite(fd: int, data: Any, offset: int) -> int:
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    def fake_close(fd: int) -> None:
        direct_fds.discard(fd)
        real_close(fd)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "pwrite", fake_pwrite)
    monkeypatch.setattr(os, "close", fake_close)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
@pytest.mark.parametrize("direct_io", ["taken", "refused at open", "refused at write"])
def test_large_delivery_resumed_at_an_odd_offset_lands_byte_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct_io: str
) -> None:
    """Chunks of every size cross the staging buffer; a resume starts mid-block.

    Received data bypasses the page cache (O_DIRECT) where the filesystem allows it and
    is written normally where it does not; the bytes on disk are the same either way.
    """
    if direct_io != "taken":
        _refuse_direct_io(monkeypatch, direct_io.split()[-1])
    rng = random.Random(7)
    data = rng.randbytes(11 * 1024 * 1024 + 12345)
    sizes = [1, 4095, 4097, 1 << 20, 3, 8192, 999_999]
    path = tmp_path / "big.part"
    first = Assembler(path, size=len(data), chunk_size=1 << 20)
    at = 0
    while at < 5 * 1024 * 1024 + 777:
        n = rng.choice(sizes)
        first.add(at, data[at : at + n])
        at += n
    first.close()
    assert path.read_bytes() == data[:at]
    again = Assembler(path, size=len(data), chunk_size=1 << 20)
    assert again.received == at
    while at < len(data):
        n = min(rng.choice(sizes), len(data) - at)
        again.add(at, data[at : at + n])
        at += n
    again.finish(hashlib.sha256(data).hexdigest())
    again.close()
    assert path.read_bytes() == data


def test_a_wrong_hash_or_short_delivery_is_refused(tmp_path: Path) -> None:
    asm = Assembler(tmp_path / "z.part", size=4, chunk_size=4)
    asm.add(0, b"abc")
    with pytest.raises(VerificationError, match="received 3 bytes"):
        asm.finish("0" * 64)
    asm.add(3, b"d")
    with pytest.raises(VerificationError, match="sha256"):
        asm.finish("0" * 64)
    asm.close()


def test_masks_are_validated_with_the_field_named() -> None:
    fields = ("plate", "speed")
    assert normalise_masks({"plate": "hash"}, fields, "m") == {"plate": {"method": "hash"}}
    for bad, fragment in (
        ({"colour": "hash"}, "not one of"),
        ({"plate": "scramble"}, "must name a method"),
        ({"plate": {"method": "truncate"}}, "keep"),
        ({"speed": {"method": "generalise", "step": 0}}, "step"),
        ({"plate": {"method": "hash", "salt": "x"}}, "unknown parameter"),
    ):
        with pytest.raises(InvalidRequest, match=fragment):
            normalise_masks(bad, fields, "m")


def test_masking_methods() -> None:
    key_a = agreement_mask_key(b"s" * 32, "ag-1")
    key_b = agreement_mask_key(b"s" * 32, "ag-2")
    masks = normalise_masks(
        {
            "plate": "hash",
            "name": "redact",
            "road": {"method": "truncate", "keep": 3},
            "speed": {"method": "generalise", "step": 10},
        },
        (),
        "m",
    )
    a, b = Masker(masks, key_a), Masker(masks, key_b)
    assert a.apply("plate", "沪A12345") == a.apply("plate", "沪A12345")
    assert a.apply("plate", "沪A12345") != b.apply("plate", "沪A12345")
    assert a.apply("name", "Li") is None
    assert a.apply("road", "Century Ave") == "Cen"
    assert a.apply("speed", "47") == "40" and a.apply("speed", 47) == 40
    assert a.apply("speed", "fast") is None  # cannot be generalised: withheld
    assert a.apply("other", "kept") == "kept"


def test_a_full_disk_fails_the_delivery_without_blocking_the_receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    asm = Assembler(tmp_path / "full.part", size=64 * 8192, chunk_size=8192)
    outcome: list[BaseException] = []

    def receive() -> None:  # far more chunks than the writer's queue holds
        try:
            for i in range(64):
                asm.add(i * 8192, bytes(8192))
            asm.finish(hashlib.sha256(bytes(64 * 8192)).hexdigest())
        except BaseException as exc:
            outcome.append(exc)

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    receiver.join(30)
    assert not receiver.is_alive(), "the receiver blocked behind a failed writer"
    assert len(outcome) == 1 and isinstance(outcome[0], Unavailable)
    assert "No space left on device" in str(outcome[0])
    with pytest.raises(Unavailable):  # the failure sticks: nothing can finish it later
        asm.close()


# -- issue 18, finding 1: a provider's ids and formats cannot name a file elsewhere -------


@pytest.mark.parametrize("name", ["../x", "tr-/../../x", "/etc/passwd", "a/b", ".", "..", "", "x/"])
def test_contained_refuses_names_that_leave_the_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidRequest, match="directly inside"):
        contained(tmp_path / "holdings", name)


def test_contained_refuses_a_symbolic_link_out_of_the_directory(tmp_path: Path) -> None:
    (tmp_path / "holdings").mkdir()
    (tmp_path / "holdings" / "tr-link").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidRequest, match="directly inside"):
        contained(tmp_path / "holdings", "tr-link")
    assert (
        contained(tmp_path / "holdings", "tr-file") == (tmp_path / "holdings").resolve() / "tr-file"
    )


@pytest.mark.parametrize(
    ("transfer_id", "fmt"),
    [
        ("tr-/../../x", ""),
        ("tr-" + "0" * 31, ""),
        ("tr-" + "0" * 32 + "\n", ""),
        ("tr-" + "0" * 32, "../x"),
        ("tr-" + "0" * 32, "exe"),
    ],
)
def test_holding_path_refuses_ids_and_formats_outside_their_grammar(
    tmp_path: Path, transfer_id: str, fmt: str
) -> None:
    with pytest.raises(VerificationError, match="is not"):
        holding_path(tmp_path, transfer_id, fmt)


def test_holding_path_names_files_inside_the_holdings(tmp_path: Path) -> None:
    tid = "tr-" + "ab" * 16
    assert holding_path(tmp_path, tid, "csv").name == f"{tid}.csv"
    assert holding_path(tmp_path, tid).name == tid
    assert holding_path(tmp_path, tid, "jsonl", partial=True).name == f"{tid}.part"


def test_assembler_creates_no_directory_and_follows_no_link(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Assembler(tmp_path / "missing" / "x.part", size=1, chunk_size=1)
    assert not (tmp_path / "missing").exists()
    target = tmp_path / "target"
    target.write_bytes(b"")
    (tmp_path / "link.part").symlink_to(target)
    with pytest.raises(OSError, match=r"symbolic links|Too many levels"):
        Assembler(tmp_path / "link.part", size=1, chunk_size=1)


def test_grammars_accept_the_ids_this_code_generates() -> None:
    """The grammars are the generators' forms (provider.py, negotiator.py, decision.py):
    if a generator changes, this fails before members start refusing each other."""
    assert TRANSFER_ID.check(f"tr-{uuid.uuid4().hex}")
    assert AGREEMENT_ID.check(f"ag-{uuid.uuid4().hex}")
    assert DECISION_ID.check(Decision(allow=True, deny=()).id)
    for bad in ("", "tr-", f"tr-{uuid.uuid4().hex}\n", f"TR-{uuid.uuid4().hex}", "tr-\x00"):
        with pytest.raises(InvalidRequest, match="transfer id"):
            TRANSFER_ID.check(bad)
    with pytest.raises(VerificationError, match="not one of"):
        check_format("pdf", error=VerificationError)
    assert printable("line one\nline two\x1b[2K", limit=12) == "line one\ufffdlin"

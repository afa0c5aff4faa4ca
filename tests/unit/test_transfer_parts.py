"""The consumer's chunk checks and the provider's field masks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from connector.errors import InvalidRequest, VerificationError
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

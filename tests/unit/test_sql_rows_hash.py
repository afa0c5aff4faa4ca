"""The SQL source's state hash is the SHA-256 of the rows as one compact JSON array
(``connector.sources.sql``), whichever encoder made the bytes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from connector.sources.sql import _RowsHash

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(),  # every code point but lone surrogates, control characters included
)
_ANY = st.one_of(
    _SCALARS,
    st.integers(),  # beyond 64 bits too
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3),
    st.dictionaries(st.text(max_size=3), st.floats(allow_nan=False), max_size=2),
)


def _defined(batches: list[list[tuple[Any, ...]]]) -> str:
    rows = [row for batch in batches for row in batch]
    text = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _hashed(batches: list[list[tuple[Any, ...]]], *, scalar: bool) -> str:
    h = _RowsHash()
    for batch in batches:
        h.update(batch, scalar=scalar)
    return h.hexdigest()


_ROWS = st.lists(st.lists(st.tuples(_SCALARS, _SCALARS), max_size=4), max_size=4)


@given(_ROWS)
def test_scalar_batches_hash_as_the_json_definition(batches: list[list[tuple[Any, ...]]]) -> None:
    assert _hashed(batches, scalar=True) == _defined(batches)
    assert _hashed(batches, scalar=False) == _defined(batches)


@given(st.lists(st.lists(st.tuples(_ANY, _ANY), max_size=4), max_size=4))
def test_any_batch_hashes_as_the_json_definition(batches: list[list[tuple[Any, ...]]]) -> None:
    # Floats (1.5e-07), integers beyond 64 bits and nested values: not left to orjson.
    assert _hashed(batches, scalar=False) == _defined(batches)


def test_a_float_batch_is_not_written_the_orjson_way() -> None:
    batch = [(1.5e-7, 1e16, 2**70)]
    assert _hashed([batch], scalar=False) == _defined([batch])

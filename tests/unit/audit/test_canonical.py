"""The fast canonical-JSON path agrees with the RFC 8785 reference implementation."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.audit.canonical import canonical_json, parse_canonical
from connector.errors import InvalidRequest, VerificationError

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_canonical_json_is_rfc8785(value: Any) -> None:
    expected = rfc8785.dumps(value)
    assert canonical_json(value) == expected
    assert parse_canonical(expected) == json.loads(expected)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), scalars, min_size=2, max_size=5))
def test_non_canonical_forms_are_refused(value: dict[str, Any]) -> None:
    pretty = json.dumps(value, indent=1, ensure_ascii=True).encode()
    if pretty != rfc8785.dumps(value):
        with pytest.raises(VerificationError):
            parse_canonical(pretty)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False),
            st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1).map(float),
            st.integers(min_value=-40, max_value=40).map(lambda e: 10.0**e),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_floats_of_any_magnitude_are_rfc8785(floats: list[float]) -> None:
    """The fast path takes floats with a fraction between 1e-4 and 1e16 and floats without
    one (written as integers); every other float goes to the reference implementation."""
    value = {"r": floats, "x": {"f": floats[0]}}
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "number",
    [
        0.0,
        -0.0,
        1.0,
        -12.0,
        0.1,
        0.0001,
        0.00009999,
        1e-5,
        1e-7,
        1234567890123456.7,
        1e15,
        1e16,
        1e21,
        2.0**53 - 1,
        2.0**53,
        5e-324,
        1.7976931348623157e308,
        0.1 + 0.2,
        123.456,
    ],
)
def test_float_boundaries_are_rfc8785(number: float) -> None:
    value = {"mm": number, "a": [number, {"b": number}]}
    assert canonical_json(value) == rfc8785.dumps(value)


def test_keys_outside_the_bmp_sort_by_utf16() -> None:
    value = {"\U0001f600": 1, "\ufb01": 2}  # code-point order and UTF-16 order differ
    assert canonical_json(value) == rfc8785.dumps(value)
    assert parse_canonical(rfc8785.dumps(value)) == value


@pytest.mark.parametrize(
    "data",
    [b'{"a":NaN}', b'{"a":1,"a":2}', b'{"a":9007199254740993}', b"not json", b'{"b":1,"a":2}'],
)
def test_invalid_inputs_are_refused(data: bytes) -> None:
    with pytest.raises(VerificationError):
        parse_canonical(data)


def test_unrepresentable_values_are_invalid_requests() -> None:
    with pytest.raises(InvalidRequest):
        canonical_json({"t": 2**60})
    with pytest.raises(InvalidRequest):
        canonical_json({"t": object()})

"""Canonical JSON (RFC 8785, JCS): the exact bytes that log entries and receipts sign.

``rfc8785`` is the reference implementation used here. For values without floats, with
integers inside I-JSON and keys inside the Basic Multilingual Plane, JCS output equals
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` (same escapes,
code-point order equals UTF-16 order), which is several times faster; so does it for
floats that have a fraction and a magnitude between 1e-4 and 1e16 (``repr`` is then
ECMAScript's form), and for floats without a fraction once they are written as integers.
That path serves the hot loops (appending entries, verifying million-entry exports,
every record of a stream) and property tests check both agree.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from connector.errors import InvalidRequest, VerificationError

__all__ = ["canonical_json", "parse_canonical"]

_MAX_INT = 2**53 - 1


_REPR_LOW, _REPR_HIGH = 1e-4, 1e16
"""Between these magnitudes Python's ``repr`` of a float with a fraction is positional,
with the shortest digits that round-trip: ECMAScript's Number-to-string form (RFC 8785)."""

_INTEGRAL = object()
"""What :func:`_plain` says of a value that is plain once its integral floats are ints."""


def _plain(value: Any) -> bool | object:
    """Whether ``value`` is in the subset where ``json.dumps`` is JCS (iterative: hot path);
    :data:`_INTEGRAL` when it is after :func:`_integral_as_int` (``1.0`` is ``1`` in JCS,
    ``1.0`` in ``json.dumps``)."""
    integral = False
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if not -_MAX_INT <= v <= _MAX_INT:
                return False
        elif t is float:
            if v.is_integer() and -_MAX_INT <= v <= _MAX_INT:  # 0.0 and -0.0 too: "0"
                integral = True
            elif v.is_integer() or not _REPR_LOW <= abs(v) < _REPR_HIGH:  # NaN, inf too
                return False
        elif t is dict:
            for k in v:
                if type(k) is not str or (not k.isascii() and max(map(ord, k)) > 0xFFFF):
                    return False
            stack.extend(v.values())
        elif t is list:
            stack.extend(v)
        else:
            return False
    return _INTEGRAL if integral else True


def _integral_as_int(value: Any) -> Any:
    """``value`` with every float that has no fraction as the int it equals."""
    t = type(value)
    if t is float:
        return int(value) if value.is_integer() else value
    if t is dict:
        return {k: _integral_as_int(v) for k, v in value.items()}
    if t is list:
        return [_integral_as_int(v) for v in value]
    return value


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 serialisation of ``value``.

    Integers must stay within +-(2**53 - 1) (I-JSON), so times in entries are integer
    milliseconds; anything unrepresentable is an ``InvalidRequest``.
    """
    try:
        plain = _plain(value)
        if plain is True:
            return _dumps(value)
        if plain is _INTEGRAL:
            return _dumps(_integral_as_int(value))
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"value cannot be canonical JSON: {exc}") from None


class _Unsafe(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _float(text: str) -> Any:
    raise _Unsafe(text)


def _int(text: str) -> int:
    value = int(text)
    if not -_MAX_INT <= value <= _MAX_INT:
        raise _Unsafe(text)
    return value


def parse_canonical(data: bytes, what: str = "entry") -> Any:
    """Parse JSON that must already be in canonical form, or raise ``VerificationError``."""
    try:
        if max(data, default=0) < 0xF0:  # no 4-byte UTF-8: every character is in the BMP
            try:
                value = json.loads(
                    data, parse_float=_float, parse_int=_int, parse_constant=_no_constant
                )
                if _dumps(value) != data:
                    raise VerificationError(f"{what} is not in canonical (RFC 8785) form")
                return value
            except _Unsafe:
                pass
        value = json.loads(data, parse_constant=_no_constant)
        again = rfc8785.dumps(value)
    except VerificationError:
        raise
    except (ValueError, UnicodeDecodeError, rfc8785.CanonicalizationError) as exc:
        raise VerificationError(f"{what} is not canonical JSON: {exc}") from None
    if again != data:
        raise VerificationError(f"{what} is not in canonical (RFC 8785) form")
    return value

"""Canonical JSON (RFC 8785, JCS): the exact bytes that log entries and receipts sign."""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from connector.errors import InvalidRequest, VerificationError

__all__ = ["canonical_json", "parse_canonical"]


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 serialisation of ``value``.

    Integers must stay within +-(2**53 - 1) (I-JSON), so times in entries are integer
    milliseconds; anything else unrepresentable is an ``InvalidRequest``.
    """
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"value cannot be canonical JSON: {exc}") from None


def parse_canonical(data: bytes, what: str = "entry") -> Any:
    """Parse JSON that must already be in canonical form, or raise ``VerificationError``."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"{what} is not JSON: {exc}") from None
    try:
        again = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise VerificationError(f"{what} is not canonical JSON: {exc}") from None
    if again != data:
        raise VerificationError(f"{what} is not in canonical (RFC 8785) form")
    return value

"""Field masks applied to table rows before a byte leaves the provider.

A mask is ``{"method": ...}`` with its parameter:

- ``redact``: the value is removed (``null`` in JSON Lines, empty in CSV);
- ``hash``: HMAC-SHA256 of the value under a key derived for the agreement, hex; the same
  value maps to the same pseudonym within one agreement and to unrelated ones across
  agreements, so consumers cannot join their deliveries on it;
- ``truncate`` with ``keep`` (characters kept from the start);
- ``generalise`` with ``step``: numbers rounded down to a multiple of ``step``; a value
  that is not a number cannot be generalised and is redacted (fail closed).

Product descriptions may write ``"redact"`` or ``"hash"`` as a bare string.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from connector import speedups
from connector.errors import InvalidRequest

__all__ = ["METHODS", "Masker", "agreement_mask_key", "normalise_masks"]

METHODS = ("redact", "hash", "truncate", "generalise")


def normalise_masks(raw: Any, fields: tuple[str, ...], where: str) -> dict[str, dict[str, Any]]:
    """Validated masks in their canonical form, or ``InvalidRequest`` naming the problem."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{where} must map field names to masks")
    masks: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        here = f"{where}.{name}"
        if fields and name not in fields:
            raise InvalidRequest(f"{here}: {name!r} is not one of the product's fields")
        if isinstance(spec, str):
            spec = {"method": spec}
        if not isinstance(spec, Mapping) or spec.get("method") not in METHODS:
            raise InvalidRequest(f"{here} must name a method: {', '.join(METHODS)}")
        method = spec["method"]
        wanted = {"redact": set(), "hash": set(), "truncate": {"keep"}, "generalise": {"step"}}
        extra = set(spec) - {"method"} - wanted[method]
        if extra:
            raise InvalidRequest(f"{here}: unknown parameter {sorted(extra)[0]!r} for {method}")
        if method == "truncate":
            keep = spec.get("keep")
            if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
                raise InvalidRequest(f"{here}.keep must be a non-negative integer")
        if method == "generalise":
            step = spec.get("step")
            if (
                not isinstance(step, int | float)
                or isinstance(step, bool)
                or not math.isfinite(step)
                or step <= 0
            ):
                raise InvalidRequest(f"{here}.step must be a positive number")
        masks[str(name)] = dict(spec)
    return masks


def agreement_mask_key(secret: bytes, agreement_id: str) -> bytes:
    """The provider's pseudonymisation key for one agreement (HKDF of its own secret)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"tds mask key v1", info=agreement_id.encode()
    ).derive(secret)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


class Masker:
    """Applies one agreement's masks to values; ``None`` means the value is withheld."""

    def __init__(self, masks: Mapping[str, Mapping[str, Any]], key: bytes) -> None:
        self._masks = {name: dict(spec) for name, spec in masks.items()}
        # Keyed once: a copy of a keyed HMAC per value instead of a new one, which spares
        # OpenSSL 3's key setup. cryptography's HMAC (OpenSSL's HMAC_CTX), not the standard
        # library's: OpenSSL 3 makes its EVP_MAC contexts (what hmac/_hashlib use) cost
        # about 0.9 µs to copy and as much again to finish, about twice the time per short
        # value (0.7-0.9 s against 1.4-1.6 s per million, measured).
        self._keyed = hmac.HMAC(key, hashes.SHA256())
        self._key = key

    def __contains__(self, field: str) -> bool:
        return field in self._masks

    @property
    def key(self) -> bytes:
        """The agreement's mask key (for the C speedups' hash mask)."""
        return self._key

    def plain_form(self, field: str) -> tuple[int, int] | None:
        """How the C speedups (``_speedups.csv_chunk``) mask ``field``: ``(kind, keep)``,
        kind 0 unmasked, 1 hash, 2 truncate to ``keep`` characters, 3 redact; ``None`` for a
        mask only the Python path applies (``generalise``)."""
        spec = self._masks.get(field)
        if spec is None:
            return (0, 0)
        method = spec["method"]
        if method == "hash":
            return (1, 0)
        if method == "truncate":
            # A keep beyond any text's length keeps it whole, as slicing does; C takes at
            # most sys.maxsize.
            return (2, min(int(spec["keep"]), sys.maxsize))
        if method == "redact":
            return (3, 0)
        return None

    def _pseudonym(self, text: str) -> str:
        h = self._keyed.copy()
        h.update(text.encode())
        return h.finalize().hex()

    def column(self, field: str, values: Iterable[Any]) -> list[Any]:
        """:meth:`apply` to every value of one column, the same values a call at a time
        would give, with the per-value work of the common cases (text hashed or truncated)
        kept to the mask itself: a million values of a hashed column is a large share of a
        delivery's time."""
        spec = self._masks.get(field)
        if spec is None:
            return list(values)
        method = spec["method"]
        if method == "hash":
            values = values if isinstance(values, list | tuple) else list(values)
            if speedups.hmac_sha256_hex is not None:
                # OpenSSL's HMAC over the whole column in C, without the interpreter lock
                # (0.2 s per million short values against 0.7-0.9 s here); the same hex.
                pseudonyms_in_c = speedups.hmac_sha256_hex(self._key, values)
                if pseudonyms_in_c is not None:
                    return pseudonyms_in_c
            if not {str, type(None)}.issuperset(map(type, values)):
                return [self.apply(field, value) for value in values]
            # Each distinct value hashed once (a value repeated within the column, a city,
            # a customer, costs one HMAC); the look-ups are the dictionary's own. Only text
            # and None: among other values, True and 1 would be one key.
            pseudonyms: dict[str | None, str | None] = dict.fromkeys(values)
            keyed = self._keyed.copy
            for value in pseudonyms:
                if value is not None:
                    h = keyed()
                    h.update(value.encode())
                    pseudonyms[value] = h.finalize().hex()
            return list(map(pseudonyms.__getitem__, values))
        if method == "truncate":
            keep = spec["keep"]
            return [
                value[:keep] if type(value) is str else self.apply(field, value) for value in values
            ]
        return [self.apply(field, value) for value in values]

    def apply(self, field: str, value: Any) -> Any:
        """The masked value of ``field`` (unchanged when the field has no mask)."""
        spec = self._masks.get(field)
        if spec is None or value is None:
            return value
        method = spec["method"]
        if method == "redact":
            return None
        text = value if isinstance(value, str) else _plain(value)
        if method == "hash":
            return self._pseudonym(text)
        if method == "truncate":
            return text[: spec["keep"]]
        number = _number(value)
        if number is None:
            return None
        step = spec["step"]
        floored = math.floor(number / step) * step
        if isinstance(step, int) and (isinstance(number, int) or float(floored).is_integer()):
            floored = int(floored)
        return str(floored) if isinstance(value, str) else floored


def _plain(value: Any) -> str:
    """A JSON value as the text a CSV cell would hold (for hashing and truncation)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

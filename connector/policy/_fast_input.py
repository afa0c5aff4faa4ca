"""Internal: build a regopy ``Input`` with direct C calls.

regopy's own conversion walks the value with abstract-base-class checks and one wrapped
ctypes call per scalar, which costs about as much as evaluating the policy. This walks
plain JSON values (dict, list, str, int, float, bool, None) with exact type dispatch and
calls the same rego C functions directly; anything else, or any C error, falls back to
regopy's conversion, so behaviour is unchanged.
"""

from __future__ import annotations

from typing import Any

import regopy

__all__ = ["to_input"]

try:  # regopy's C handle is internal: without it, regopy converts as usual
    from regopy import rego_shared

    _C: Any = rego_shared.rego
except (ImportError, AttributeError):  # pragma: no cover - depends on the regopy build
    _C = None
_OK = 0


class _Unsupported(Exception):
    pass


def _add(p: Any, value: Any) -> int:
    t = type(value)
    if t is str:
        return int(_C.regoInputString(p, value.encode()))
    if t is bool:
        return int(_C.regoInputBoolean(p, value))
    if t is int:
        if not -(2**63) <= value < 2**63:
            raise _Unsupported
        return int(_C.regoInputInt(p, value))
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise _Unsupported
            if (
                _C.regoInputString(p, k.encode()) != _OK
                or _add(p, v) != _OK
                or _C.regoInputObjectItem(p) != _OK
            ):
                return 1
        return int(_C.regoInputObject(p, len(value)))
    if t is list:
        for v in value:
            if _add(p, v) != _OK:
                return 1
        return int(_C.regoInputArray(p, len(value)))
    if value is None:
        return int(_C.regoInputNull(p))
    if t is float:
        return int(_C.regoInputFloat(p, value))
    raise _Unsupported


def to_input(value: Any) -> regopy.Input | Any:
    """A prepared ``regopy.Input`` for ``value`` (or ``value`` itself to let regopy convert)."""
    if _C is None:
        return value
    p = _C.regoNewInput()
    try:
        ok = _add(p, value) == _OK
    except (_Unsupported, RecursionError):
        ok = False
    if not ok:
        _C.regoFreeInput(p)
        return value
    prepared = regopy.Input.__new__(regopy.Input)
    prepared._impl = p  # freed by Input.__del__
    return prepared

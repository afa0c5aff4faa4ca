"""Internal: the regopy calls on the decision path, made directly through cffi.

Per decision, regopy's own wrappers cost about as much as evaluating the policy: its
input conversion walks the value with abstract-base-class checks and one ctypes call per
scalar, and its ``Output`` serialises the result to JSON four times (size and text,
twice). Here the input is built with exact type dispatch through cffi, whose calls cost
about half what ctypes' do, and the result is serialised once into a reused buffer.
The same rego C functions are called either way; anything these helpers do not handle
falls back to regopy, so behaviour is unchanged.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import regopy

__all__ = ["QueryError", "query_entrypoint", "to_input"]

_CDEF = """
void* regoNewInput(void);
uint32_t regoInputInt(void*, int64_t);
uint32_t regoInputFloat(void*, double);
uint32_t regoInputString(void*, const char*);
uint32_t regoInputBoolean(void*, _Bool);
uint32_t regoInputNull(void*);
uint32_t regoInputObjectItem(void*);
uint32_t regoInputObject(void*, uint32_t);
uint32_t regoInputArray(void*, uint32_t);
void regoFreeInput(void*);
void* regoBundleQueryEntrypoint(void*, void*, const char*);
_Bool regoOutputOk(void*);
uint32_t regoOutputJSONSize(void*);
uint32_t regoOutputJSON(void*, char*, uint32_t);
void regoFreeOutput(void*);
"""

try:  # the library regopy itself loaded; without it, regopy does the work as usual
    import cffi
    from regopy import rego_shared

    _ffi = cffi.FFI()
    _ffi.cdef(_CDEF)
    _C: Any = _ffi.dlopen(rego_shared.rego._name)
except (ImportError, AttributeError, OSError):  # pragma: no cover - depends on the build
    _C = None
else:
    _string, _boolean, _int = _C.regoInputString, _C.regoInputBoolean, _C.regoInputInt
    _item, _object, _array = _C.regoInputObjectItem, _C.regoInputObject, _C.regoInputArray

_INT64 = 2**63
_BUFFER_BYTES = 64 * 1024
_buffers = threading.local()


class _Unsupported(Exception):
    pass


class QueryError(Exception):
    """The interpreter refused the query (its error message says why)."""


def _add(p: Any, value: Any) -> int:
    """Push ``value`` onto the input under construction; non-zero on a C error."""
    t = type(value)
    if t is str:
        return int(_string(p, value.encode()))
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise _Unsupported
            if _string(p, k.encode()) or _add(p, v) or _item(p):
                return 1
        return int(_object(p, len(value)))
    if t is bool:
        return int(_boolean(p, value))
    if t is int:
        if not -_INT64 <= value < _INT64:
            raise _Unsupported
        return int(_int(p, value))
    if t is list:
        for v in value:
            if _add(p, v):
                return 1
        return int(_array(p, len(value)))
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
        ok = _add(p, value) == 0
    except (_Unsupported, RecursionError):
        ok = False
    if not ok:
        _C.regoFreeInput(p)
        return value
    prepared = regopy.Input.__new__(regopy.Input)
    prepared._impl = int(_ffi.cast("uintptr_t", p))  # regopy frees it (Input.__del__)
    return prepared


def query_entrypoint(
    rego: regopy.Interpreter, bundle: regopy.Bundle, entrypoint: str
) -> tuple[bool, list[Any]]:
    """Query a prepared entrypoint: (evaluation ok, the result expressions).

    Raises ``QueryError`` when the interpreter refuses the query itself.
    """
    if _C is None:
        try:
            output = rego.query_bundle_entrypoint(bundle, entrypoint)
        except regopy.RegoError as exc:
            raise QueryError(str(exc)) from None
        if not output.ok():
            return False, []
        return True, [r.expressions for r in output.results]
    out = _C.regoBundleQueryEntrypoint(
        _ffi.cast("void*", rego._impl), _ffi.cast("void*", bundle._impl), entrypoint.encode()
    )
    if out == _ffi.NULL:
        raise QueryError(regopy.rego_shared.rego_get_error(rego._impl))
    try:
        if not _C.regoOutputOk(out):
            return False, []
        text = _output_json(out)
    finally:
        _C.regoFreeOutput(out)
    if text == "undefined":
        return True, []
    results = json.loads(text)
    if not isinstance(results, list):
        results = [results]
    return True, [r.get("expressions", []) for r in results if isinstance(r, dict)]


def _output_json(out: Any) -> str:
    """The output as JSON text, written once into this thread's buffer when it fits."""
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = _ffi.new("char[]", _BUFFER_BYTES)
    if _C.regoOutputJSON(out, buffer, _BUFFER_BYTES) != 0:  # too big for the buffer
        size = _C.regoOutputJSONSize(out)
        buffer = _ffi.new("char[]", size)
        if _C.regoOutputJSON(out, buffer, size) != 0:
            raise QueryError("could not read the policy's output")
    return str(_ffi.string(buffer).decode())

"""Chunk messages read straight off the wire, their data not copied.

protobuf's parser copies a chunk's bytes twice on the way to Python (into its arena, then
out as a new ``bytes``). At hundreds of megabytes a second those copies were a sizeable
share of the receiving connector's CPU, all of it holding the GIL, so the consumer reads
``tds.v1.Chunk`` itself: three fields, and its data is a view into the received message.
"""

from __future__ import annotations

from typing import NamedTuple

from connector._proto.tds.v1 import transfer_pb2
from connector.errors import VerificationError

__all__ = ["PULL_METHOD", "RawChunk", "parse_chunk"]

_SERVICE = transfer_pb2.DESCRIPTOR.services_by_name["TransferService"]
PULL_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Pull'].name}"

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_TRANSFER_ID, _OFFSET, _DATA = 1, 2, 3  # tds.v1.Chunk's field numbers


class RawChunk(NamedTuple):
    """A decoded ``tds.v1.Chunk``; ``data`` is a view into the message it came in."""

    transfer_id: str
    offset: int
    data: memoryview


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise VerificationError("malformed chunk: a truncated or overlong varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def parse_chunk(message: bytes) -> RawChunk:
    """Decode one chunk as protobuf would (last field wins, unknown fields skipped).

    Raises ``VerificationError`` for anything that is not a well-formed chunk.
    """
    buf = memoryview(message)
    transfer_id, offset, data = "", 0, buf[:0]
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, i = _varint(buf, i)
            if field == _OFFSET:
                offset = value - (1 << 64) if value >= 1 << 63 else value
                continue
        elif wire == _LENGTH:
            size, i = _varint(buf, i)
            if i + size > len(buf):
                raise VerificationError("malformed chunk: a field runs past the message")
            value_view = buf[i : i + size]
            i += size
            if field == _DATA:
                data = value_view
                continue
            if field == _TRANSFER_ID:
                try:
                    transfer_id = str(value_view, "utf-8")
                except UnicodeDecodeError:
                    raise VerificationError("malformed chunk: transfer id is not UTF-8") from None
                continue
        elif wire == _FIXED64:
            i += 8
        elif wire == _FIXED32:
            i += 4
        else:
            raise VerificationError(f"malformed chunk: wire type {wire} is not allowed")
        if field in (_TRANSFER_ID, _OFFSET, _DATA):
            raise VerificationError(f"malformed chunk: field {field} has the wrong wire type")
        if field == 0 or i > len(buf):
            raise VerificationError("malformed chunk: a bad field key or a truncated field")
    return RawChunk(transfer_id, offset, data)

"""Chunk messages read straight off the wire, their data not copied, and written with
their data copied once.

protobuf's parser copies a chunk's bytes twice on the way to Python (into its arena, then
out as a new ``bytes``). At hundreds of megabytes a second those copies were a sizeable
share of the receiving connector's CPU, all of it holding the GIL, so the consumer reads
``tds.v1.Chunk`` itself: three fields, and its data is a view into the received message.

The provider's side had the same two copies the other way (the bytes read into a
``Chunk``, then out by ``SerializeToString``): it sends each chunk as ``encode_chunk``
writes it, protobuf's own encoding of the id and offset followed by the data field, one
copy of the data. ``add_transfer_service`` registers the service so that ``Pull`` sends
those bytes as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import grpc

from connector._proto.tds.v1 import transfer_pb2, transfer_pb2_grpc
from connector.errors import VerificationError

__all__ = ["PULL_METHOD", "RawChunk", "add_transfer_service", "encode_chunk", "parse_chunk"]

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


_DATA_KEY = bytes([_DATA << 3 | _LENGTH])


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_chunk(transfer_id: str, offset: int, data: bytes) -> bytes:
    """A ``tds.v1.Chunk`` on the wire, ``data`` copied once: protobuf encodes the id and
    offset, the data field follows (a message is its fields in any order, so this parses
    exactly as ``Chunk(transfer_id=…, offset=…, data=…)`` does)."""
    head = transfer_pb2.Chunk(transfer_id=transfer_id, offset=offset).SerializeToString()
    return b"".join((head, _DATA_KEY, _varint_bytes(len(data)), data))


def _serialize_pull(chunk: bytes | transfer_pb2.Chunk) -> bytes:
    """``Pull``'s response serializer: an encoded chunk as it is, a message serialized."""
    return chunk if type(chunk) is bytes else chunk.SerializeToString()  # type: ignore[union-attr]


def _encoded_pull(name: str, handler: Any) -> Any:
    if handler is not None and name in ("Pull", PULL_METHOD):
        return handler._replace(response_serializer=_serialize_pull)
    return handler


class _EncodedPullHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        return _encoded_pull(handler_call_details.method, handler)


class _Registering:
    """The server as the generated registration sees it: the handlers it adds are added
    with ``Pull``'s serializer replaced, everything else as generated."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_EncodedPullHandler(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service, {name: _encoded_pull(name, h) for name, h in handlers.items()}
        )


def add_transfer_service(servicer: Any, server: grpc.Server) -> None:
    """``add_TransferServiceServicer_to_server``, with ``Pull`` sending the chunks the
    servicer yields encoded (``encode_chunk``) as they are."""
    add: Callable[[Any, Any], None] = transfer_pb2_grpc.add_TransferServiceServicer_to_server
    add(servicer, _Registering(server))

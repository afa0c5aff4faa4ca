"""The consumer's own reading of tds.v1.Chunk agrees with protobuf's, without copying."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector._proto.tds.v1 import transfer_pb2
from connector.errors import VerificationError
from connector.transfer.wire import PULL_METHOD, encode_chunk, parse_chunk


def test_the_pull_method_is_the_services() -> None:
    assert PULL_METHOD == "/tds.v1.TransferService/Pull"


@given(
    transfer_id=st.text(max_size=60),
    offset=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    data=st.binary(max_size=5000),
)
def test_every_chunk_reads_as_protobuf_reads_it(transfer_id: str, offset: int, data: bytes) -> None:
    message = transfer_pb2.Chunk(transfer_id=transfer_id, offset=offset, data=data)
    raw = message.SerializeToString()
    chunk = parse_chunk(raw)
    assert (chunk.transfer_id, chunk.offset, bytes(chunk.data)) == (transfer_id, offset, data)


@given(
    transfer_id=st.text(max_size=60),
    offset=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    data=st.one_of(st.binary(max_size=300), st.sampled_from([b"x" * 16_383, b"y" * 16_384])),
)
def test_an_encoded_chunk_is_the_chunk_protobuf_and_the_consumer_read(
    transfer_id: str, offset: int, data: bytes
) -> None:
    """The provider's one-copy encoding is a well-formed tds.v1.Chunk, for any client."""
    raw = encode_chunk(transfer_id, offset, data)
    assert transfer_pb2.Chunk.FromString(raw) == transfer_pb2.Chunk(
        transfer_id=transfer_id, offset=offset, data=data
    )
    chunk = parse_chunk(raw)
    assert (chunk.transfer_id, chunk.offset, bytes(chunk.data)) == (transfer_id, offset, data)


def test_data_is_a_view_into_the_message_not_a_copy() -> None:
    raw = transfer_pb2.Chunk(transfer_id="t", offset=7, data=b"x" * 4096).SerializeToString()
    chunk = parse_chunk(raw)
    assert chunk.data.obj is raw


def test_unknown_fields_are_skipped_and_the_last_value_wins() -> None:
    unknown = (
        b"\x20\x96\x01"  # field 4, varint
        + b"\x29"
        + bytes(8)  # field 5, fixed64
        + b"\x35"
        + bytes(4)  # field 6, fixed32
        + b"\x3a\x02hi"  # field 7, length-delimited
    )
    first = transfer_pb2.Chunk(transfer_id="a", offset=1, data=b"old").SerializeToString()
    last = transfer_pb2.Chunk(transfer_id="b", offset=2, data=b"new").SerializeToString()
    raw = first + unknown + last
    expected = transfer_pb2.Chunk.FromString(raw)
    chunk = parse_chunk(raw)
    assert (chunk.transfer_id, chunk.offset, bytes(chunk.data)) == (
        expected.transfer_id,
        expected.offset,
        expected.data,
    )


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"\x1a\x05abc", "runs past"),  # data claims 5 bytes, has 3
        (b"\x10\xff\xff", "truncated"),  # offset varint never ends
        (b"\x10" + b"\xff" * 10 + b"\x01", "overlong"),
        (b"\x0a\x02\xff\xfe", "UTF-8"),  # transfer id
        (b"\x12\x01x", "wrong wire type"),  # offset sent as bytes
        (b"\x18\x01", "wrong wire type"),  # data sent as a varint
        (b"\x0b", "wire type 3"),  # a group
        (b"\x02\x00", "bad field key"),  # field number 0
        (b"\x29\x00\x00", "truncated"),  # fixed64 cut short
    ],
)
def test_malformed_chunks_are_integrity_failures(raw: bytes, fragment: str) -> None:
    with pytest.raises(VerificationError, match=fragment):
        parse_chunk(raw)

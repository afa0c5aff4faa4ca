"""``tds catalog list --json`` converts each product as protobuf's JSON mapping does.

``message_dict`` replaces ``MessageToDict`` on the path of a whole catalog; these cases
hold it to protobuf's own answer for every kind of product a catalog shows, and for the
kinds of field it leaves to ``MessageToDict``.
"""

from __future__ import annotations

import json

import pytest
from google.protobuf.json_format import MessageToDict

from connector._proto.tds.v1 import admin_pb2, catalog_pb2, registry_pb2
from connector.cli.product import message_dict

FULL = catalog_pb2.ProductSummary(
    id="p-1",
    title='Trafic à Genève — "quoted" \\ and \U0001f6b2',
    description="",
    owner="gov",
    grade="general",
    tags=["traffic", "", "ünï"],
    domain="city",
    fields=["time", "value"],
    registration_code="",
    personal=True,
    offers=[
        catalog_pb2.OfferTerms(
            id="o1",
            purposes=["research"],
            valid_from_ns=0,
            valid_until_ns=(1 << 63) - 1,
            max_transfers=-1,
            max_bytes=1 << 40,
            obligations_json='{"delete_after_days":30}',
            has_policy_module=True,
            delivery=["pull", "push"],
            compute_json="",
            max_messages=5,
            per_period=catalog_pb2.PeriodLimits(period="day", max_messages=0, max_bytes=9),
        ),
        catalog_pb2.OfferTerms(id="o2", per_period=catalog_pb2.PeriodLimits()),
        catalog_pb2.OfferTerms(),
    ],
)


def _same(message: object) -> None:
    assert message_dict(message) == MessageToDict(message, preserving_proto_field_name=True)


def test_products_convert_as_protobufs_json_mapping_does() -> None:
    _same(FULL)
    _same(catalog_pb2.ProductSummary())  # nothing set: {}
    _same(catalog_pb2.ProductSummary(id="only"))
    _same(catalog_pb2.ListProductsResponse(products=[FULL, FULL], next_page_token="t"))
    # 64-bit integers are JSON text, 32-bit ones numbers (page_size is an optional int32).
    request = catalog_pb2.ListProductsRequest(page_size=0, tag="x")
    assert message_dict(request) == {"page_size": 0, "tag": "x"}
    _same(request)
    assert message_dict(FULL)["offers"][0]["max_bytes"] == str(1 << 40)


def test_kinds_it_does_not_convert_are_left_to_protobuf() -> None:
    # Bytes are base64 and doubles numbers in protobuf's mapping: those messages are
    # converted by MessageToDict itself.
    chunk = admin_pb2.HoldingChunk(data=b"\x00\xffraw", offset=3)
    assert message_dict(chunk)["data"] == "AP9yYXc="
    _same(chunk)
    metering = admin_pb2.AgreementMetering(epsilon_spent=0.25, bytes=7)
    assert message_dict(metering)["epsilon_spent"] == 0.25
    _same(metering)
    for name in registry_pb2.DESCRIPTOR.message_types_by_name:
        _same(getattr(registry_pb2, name)())


def test_json_lines_written_beside_the_dicts_print_as_emit_prints_the_dicts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from connector.cli.output import emit
    from connector.cli.product import _dict_and_line

    for count in (1, 100, 101, 250):  # both sides of the long-list form
        summaries = [
            catalog_pb2.ProductSummary(id=f"p-{i}", title=FULL.title) for i in range(count)
        ]
        summaries[0] = FULL
        both = [_dict_and_line(s) for s in summaries]
        products = [d for d, _ in both]
        emit(products, "", as_json=True)
        expected = capsys.readouterr().out
        emit(products, "", as_json=True, lines=[line for _, line in both])
        assert capsys.readouterr().out == expected
        assert json.loads(expected) == [
            MessageToDict(s, preserving_proto_field_name=True) for s in summaries
        ]

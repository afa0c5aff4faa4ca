"""Structure-aware request fuzzing against a running connector (issue 18, "make it stay fixed").

Requests are built from the proto descriptors: each field of the method's request type gets
a value a hostile member would try (empty, huge, NUL, ``..`` paths, non-UTF-8 bytes in a
string, the wrong wire type, a negative or enormous number), or the whole body is random
bytes. Bodies are encoded here in the protobuf wire format by hand only so that they can
carry what the protobuf library refuses to serialise (non-UTF-8 strings, wrong wire
types); nothing here is a security primitive.

Shared by ``tests/fuzz`` (short, in CI) and ``bench/fuzz.py`` (long runs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from connector.demo.space import LocalSpace
from connector.node.node import Node
from tests.support.malformed import Rpc, call_raw, probe_channel, tds_rpcs

__all__ = [
    "Findings",
    "Target",
    "bodies_for",
    "encode_field",
    "fuzz_target",
    "state_of",
]

HOSTILE_TEXT = [
    b"",
    b"..",
    b"../../../../etc/passwd",
    b"tr-/../../canary",
    b"a\x00b",
    b"\x00",
    b"\xff\xfe\xfd",  # not UTF-8
    b"\xc3\x28",  # broken UTF-8 sequence
    b"%s%n'; DROP TABLE negotiation; --",
    b"\n\r\x1b[31mforged log line",
    b"x" * 70_000,
]
HOSTILE_INTS = [0, -1, 1, 2**31 - 1, -(2**63), 2**63 - 1, 2**64 - 1]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 are ten-byte varints in the wire format
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    """One field in the protobuf wire format: a varint (type 0) or length-delimited (2)."""
    key = _varint((number << 3) | wire_type)
    if wire_type == 0:
        assert isinstance(payload, int)
        return key + _varint(payload)
    assert isinstance(payload, bytes)
    return key + _varint(len(payload)) + payload


def _field_value(f: FieldDescriptor, depth: int) -> st.SearchStrategy[bytes]:
    number = f.number
    wrong_type = st.sampled_from([0, 2]).map(
        lambda wt: encode_field(number, wt, 7 if wt == 0 else b"\x00\xff")
    )
    if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        good = st.one_of(st.sampled_from(HOSTILE_TEXT), st.binary(max_size=64))
        return st.one_of(good.map(lambda b: encode_field(number, 2, b)), wrong_type)
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if depth >= 2:
            return st.binary(max_size=16).map(lambda b: encode_field(number, 2, b))
        inner = message_body(f.message_type, depth + 1)
        return st.one_of(inner.map(lambda b: encode_field(number, 2, b)), wrong_type)
    if f.type in (
        FieldDescriptor.TYPE_DOUBLE,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_FLOAT,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return st.binary(min_size=1, max_size=9).map(lambda b: encode_field(number, 2, b))
    return st.one_of(st.sampled_from(HOSTILE_INTS).map(lambda v: encode_field(number, 0, v)))


def message_body(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[bytes]:
    """A body of ``descriptor``'s type with each field absent, hostile or of the wrong type."""
    fields = [
        st.one_of(st.just(b""), _field_value(f, depth)).flatmap(
            # repeated fields are sent twice, to reach the repeated and map paths too
            lambda b, f=f: st.just(b + b if f.is_repeated else b)
        )
        for f in descriptor.fields
    ]
    if not fields:
        return st.just(b"")
    return st.tuples(*fields).map(b"".join)


def bodies_for(rpc: Rpc) -> st.SearchStrategy[bytes]:
    """What to send to ``rpc``: a structured hostile body most of the time, else raw bytes."""
    return st.one_of(message_body(rpc.request), st.binary(max_size=256))


@dataclass
class Findings:
    """Log records that must not happen while fuzzing: errors and tracebacks."""

    records: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: logging.LogRecord) -> None:
        """Keep an ERROR record or one that carries a traceback."""
        if record.levelno >= logging.ERROR or record.exc_info:
            with self.lock:
                self.records.append(f"{record.name}: {record.getMessage()}")


class _Collector(logging.Handler):
    def __init__(self, findings: Findings) -> None:
        super().__init__()
        self._findings = findings

    def emit(self, record: logging.LogRecord) -> None:
        self._findings.add(record)


@dataclass
class Target:
    """A running server (a connector or the registry), the methods it serves, and three
    ways to call it."""

    space: LocalSpace
    node: Node
    channels: dict[str, grpc.Channel]
    """``member`` (certificate + token), ``admin`` (its admin certificate), ``anonymous``
    (a member certificate, no token)."""
    findings: Findings
    rpcs: list[Rpc]

    def call(self, who: str, rpc: Rpc, body: bytes) -> tuple[grpc.StatusCode, str]:
        """Send ``body`` as it is (twice on a client stream) and return status and details."""
        return call_raw(self.channels[who], rpc, [body, body], timeout=10)

    def serving(self) -> bool:
        """Whether the standard health service still answers SERVING."""
        stub = health_pb2_grpc.HealthStub(self.channels["anonymous"])
        got = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(got.status == health_pb2.HealthCheckResponse.SERVING)


def state_of(node: Node) -> dict[str, Any]:
    """Every row count of the connector's database and its log size: what must not change
    when a call is refused."""
    from sqlalchemy import inspect, text

    assert node.db is not None
    engine = node.db.engine
    with engine.connect() as conn:
        tables = sorted(inspect(conn).get_table_names())
        # table names come from the database's own catalog, not from input
        counts = {
            t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar()  # noqa: S608
            for t in tables
        }
    return counts


@contextmanager
def fuzz_target(root: Path, database_url: str = "") -> Iterator[dict[str, Target]]:
    """A registry and connector ``a`` (both on ``database_url``, default SQLite), as
    ``registry`` and ``connector`` targets; member ``b`` calls them."""
    from connector._proto.tds.v1 import registry_pb2, registry_pb2_grpc
    from connector.identity.names import Role

    findings = Findings()
    collector = _Collector(findings)
    logger = logging.getLogger()
    logger.addHandler(collector)
    with LocalSpace.create(root, [("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        node = sp.start_connector("a", database_url=database_url)
        sp.enrol("b", "127.0.0.1:1")  # b only calls: it needs a token, not a server
        b, a = sp.manifest.participant("b"), sp.manifest.participant("a")
        pki, op = sp.pki_dir, sp.manifest.operator_id
        with probe_channel(
            pki, sp.space, sp.nodes[op].port, op, pki / b.tls_key, pki / b.tls_cert, None
        ) as ch:
            token = (
                registry_pb2_grpc.RegistryServiceStub(ch)
                .IssueToken(registry_pb2.IssueTokenRequest(), timeout=10)
                .token
            )
        registry = sp.nodes[op]
        o = sp.manifest.participant(op)

        def channels_to(server: Node, name: str, admin: Any) -> dict[str, grpc.Channel]:
            def dial(key: Path, cert: Path, bearer: str | None) -> grpc.Channel:
                return probe_channel(pki, sp.space, server.port, name, key, cert, bearer)

            return {
                "member": dial(pki / b.tls_key, pki / b.tls_cert, token),
                "admin": dial(pki / admin.admin_key, pki / admin.admin_cert, None),
                "anonymous": dial(pki / b.tls_key, pki / b.tls_cert, None),
            }

        registry_rpc = "/tds.v1.RegistryService/"
        targets = {
            "connector": Target(
                sp,
                node,
                channels_to(node, "a", a),
                findings,
                [r for r in tds_rpcs() if not r.path.startswith(registry_rpc)],
            ),
            "registry": Target(
                sp,
                registry,
                channels_to(registry, op, o),
                findings,
                [r for r in tds_rpcs() if r.path.startswith(registry_rpc)],
            ),
        }
        try:
            yield targets
        finally:
            for t in targets.values():
                for channel in t.channels.values():
                    channel.close()
            logger.removeHandler(collector)

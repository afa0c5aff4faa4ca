"""Connector behaviour around authentication: health, reflection, refresh, fail-closed."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from connector._proto.tds.v1 import peer_pb2, peer_pb2_grpc
from connector.clock import FixedClock
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node import Node
from connector.registry.client import RegistryClient
from connector.rpc.channel import TlsIdentity, open_channel
from tests.integration.test_authentication import own_token, pem, raw_channel


def test_health_and_reflection_are_served(space: LocalSpace) -> None:
    channel = raw_channel(space, "a", pem(space, "b", "tls_key"), pem(space, "b", "tls_cert"))
    with channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tds.v1.PeerService"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"tds.v1.PeerService", "tds.v1.AdminService", "grpc.health.v1.Health"} <= names


def test_sqlite_runs_in_wal_mode(space: LocalSpace) -> None:
    db = space.nodes["a"].db
    assert db is not None
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_token_is_cached_and_refreshed_before_expiry(space: LocalSpace) -> None:
    me = space.manifest.participant("a")
    clock = FixedClock(time.time())
    client = RegistryClient(
        address=space.registry_address,
        space=space.space,
        operator_id="operator",
        issuer=space.nodes["a"].issuer,
        tls=TlsIdentity.load(
            space.pki_dir / "ca.pem", space.pki_dir / me.tls_cert, space.pki_dir / me.tls_key
        ),
        operator_key=space.nodes["a"].registry._operator_key,  # type: ignore[union-attr]
        clock=clock,
        token_refresh_fraction=0.7,
    )
    try:
        first = client.token()
        assert client.token() == first  # cached
        ttl = client.token_expires_at - int(clock.now())
        clock.advance(ttl * 0.71)
        assert client.token() != first  # refreshed at 70 % of its lifetime
    finally:
        client.close()


def test_connector_without_a_revocation_list_refuses_calls(tmp_path: Path) -> None:
    """A connector whose registry is unreachable serves nobody (fail closed)."""
    with LocalSpace.create(tmp_path, [("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        sp.start_connector("a")
        token = own_token(sp, "a")
        # b points at a registry address where nothing listens.
        cfg = sp.write_config("b", "127.0.0.1:0", "127.0.0.1:9")
        node = Node(cfg)
        node.start()
        sp.nodes["b"] = node
        assert not node.wait_ready(0.5)
        me = sp.manifest.participant("a")
        tls = TlsIdentity.load(
            sp.pki_dir / "ca.pem", sp.pki_dir / me.tls_cert, sp.pki_dir / me.tls_key
        )
        channel = open_channel(
            f"127.0.0.1:{node.port}", tls, space=sp.space, peer="b", token=lambda: token
        )
        with channel, pytest.raises(grpc.RpcError) as info:
            peer_pb2_grpc.PeerServiceStub(channel).Ping(peer_pb2.PingRequest(), timeout=5)
        err = info.value
        assert isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "no revocation list" in (err.details() or "")


def test_method_missing_from_the_access_table_is_refused(space: LocalSpace) -> None:
    from connector.node.services import PeerServicer
    from connector.rpc.auth import Authenticator
    from connector.rpc.server import Service, build_server

    node = space.nodes["a"]
    registry = node.registry
    assert registry is not None
    authenticator = Authenticator(
        space=space.space,
        participant="a",
        operator_key=registry._operator_key,
        issuer=node.issuer,
        revocations=registry,
        clock=node.clock,
    )
    service = Service(
        "tds.v1.PeerService",
        peer_pb2_grpc.add_PeerServiceServicer_to_server,
        PeerServicer("a", "enterprise"),
        access={},
    )
    handle = build_server(
        listen="127.0.0.1:0",
        services=[service],
        authenticator=authenticator,
        ca_pem=(space.pki_dir / "ca.pem").read_bytes(),
        cert_pem=pem(space, "a", "tls_cert"),
        key_pem=pem(space, "a", "tls_key"),
        max_workers=2,
        max_message_bytes=1 << 20,
    )
    try:
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(
                (space.pki_dir / "ca.pem").read_bytes(),
                pem(space, "b", "tls_key"),
                pem(space, "b", "tls_cert"),
            ),
            grpc.access_token_call_credentials(own_token(space, "b")),
        )
        channel = grpc.secure_channel(
            f"127.0.0.1:{handle.port}",
            creds,
            options=[("grpc.ssl_target_name_override", "a.city.tds")],
        )
        with channel, pytest.raises(grpc.RpcError) as info:
            peer_pb2_grpc.PeerServiceStub(channel).Ping(peer_pb2.PingRequest(), timeout=5)
        err = info.value
        assert isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "not open to any caller" in (err.details() or "")
    finally:
        handle.stop(0)


def test_enrolment_is_refused_when_the_log_cannot_be_written(tmp_path: Path) -> None:
    """The registry logs an enrolment before storing it: no log, no enrolment."""
    from sqlalchemy import text

    from connector.errors import Unavailable
    from connector.store.database import open_database

    with LocalSpace.create(tmp_path, [("a", Role.ENTERPRISE)]) as sp:
        registry = sp.start_registry()
        assert registry.db is not None
        with registry.db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE log_node RENAME TO log_node_gone"))
        with pytest.raises(Unavailable, match="audit log could not be written"):
            sp.enrol("a", "127.0.0.1:9")
        check = open_database(registry.cfg.database_url)
        try:
            with check.engine.connect() as conn:
                count = conn.execute(
                    text("SELECT count(*) FROM participant WHERE id = 'a'")
                ).scalar_one()
            assert count == 0
        finally:
            check.close()


def test_reflection_v1_is_served_not_only_v1alpha(space: LocalSpace) -> None:
    # A v1-only client (grpcurl, current tooling) got UNIMPLEMENTED. The v1 messages are the
    # v1alpha ones on the wire, so the v1alpha classes build a genuine v1 call here.
    channel = raw_channel(space, "a", pem(space, "b", "tls_key"), pem(space, "b", "tls_cert"))
    with channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listed, described = call(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="grpc.reflection.v1.ServerReflection"
                    ),
                ]
            ),
            timeout=5,
        )
    names = {s.name for s in listed.list_services_response.service}
    assert {"tds.v1.PeerService", "grpc.reflection.v1.ServerReflection"} <= names
    assert "grpc.reflection.v1alpha.ServerReflection" in names
    files = described.file_descriptor_response.file_descriptor_proto
    assert files, described.error_response.error_message
    proto = descriptor_pb2.FileDescriptorProto.FromString(files[0])
    assert proto.package == "grpc.reflection.v1"
    assert [m.input_type for m in proto.service[0].method] == [
        ".grpc.reflection.v1.ServerReflectionRequest"
    ]

"""Every call is refused without the right certificate and membership token.

Each bad input from the foundation issue has its own test against real servers on port 0.
Certificate problems (none, another CA, expired) are refused by the TLS handshake itself,
so no handler runs; the client library turns them into clear errors before dialling.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from connector._proto.tds.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    catalog_pb2,
    peer_pb2,
    peer_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from connector.demo.space import LocalSpace
from connector.errors import AuthenticationError
from connector.identity.certs import (
    certificate_thumbprint,
    load_certificate,
    load_ed25519_private_key,
)
from connector.identity.names import Role
from connector.identity.pki import init_space, issue_participant_certificate, load_ca
from connector.registry.revocation import RevocationList, sign_revocation_list
from connector.rpc.channel import TlsIdentity, calling, open_channel

StatusCode = grpc.StatusCode


def pem(space: LocalSpace, participant: str, what: str) -> bytes:
    me = space.manifest.participant(participant)
    return (space.pki_dir / getattr(me, what)).read_bytes()


def ca_pem(space: LocalSpace) -> bytes:
    return (space.pki_dir / "ca.pem").read_bytes()


def raw_channel(
    space: LocalSpace, target: str, key: bytes | None, cert: bytes | None, token: str | None = None
) -> grpc.Channel:
    """A channel that skips every client-side check, to probe the server."""
    creds = grpc.ssl_channel_credentials(ca_pem(space), key, cert)
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(
        f"127.0.0.1:{space.nodes[target].port}",
        creds,
        options=[("grpc.ssl_target_name_override", f"{target}.{space.space}.tds")],
    )


def ping(space: LocalSpace, caller: str, target: str, token: str | None) -> grpc.RpcError:
    channel = raw_channel(
        space, target, pem(space, caller, "tls_key"), pem(space, caller, "tls_cert"), token
    )
    with channel, pytest.raises(grpc.RpcError) as info:
        peer_pb2_grpc.PeerServiceStub(channel).Ping(peer_pb2.PingRequest(), timeout=5)
    err = info.value
    assert isinstance(err, grpc.RpcError)
    return err


def operator_key(space: LocalSpace) -> ed25519.Ed25519PrivateKey:
    op = space.manifest.participant(space.manifest.operator_id)
    return load_ed25519_private_key(space.pki_dir / op.signing_key)


def claims(space: LocalSpace, participant: str, **overrides: Any) -> dict[str, Any]:
    cert = load_certificate(space.pki_dir / space.manifest.participant(participant).tls_cert)
    now = int(time.time())
    base = {
        "iss": space.nodes["a"].issuer,
        "sub": participant,
        "aud": space.space,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "role": "enterprise",
        "attrs": {},
        "cnf": {"x5t#S256": certificate_thumbprint(cert)},
    }
    base.update(overrides)
    return base


def sign(
    space: LocalSpace, body: dict[str, Any], key: Any = None, typ: str = "tds-membership+jwt"
) -> str:
    return jwt.encode(body, key or operator_key(space), algorithm="EdDSA", headers={"typ": typ})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def own_token(space: LocalSpace, participant: str) -> str:
    registry = space.nodes[participant].registry
    assert registry is not None
    return registry.token()


def assert_refused(err: grpc.RpcError, code: StatusCode, fragment: str) -> None:
    assert err.code() == code, err.details()
    assert fragment in (err.details() or ""), err.details()


# -- the happy path, so that the refusals below mean something -----------------------


def test_member_with_certificate_and_token_is_accepted(space: LocalSpace) -> None:
    channel = raw_channel(
        space, "b", pem(space, "a", "tls_key"), pem(space, "a", "tls_cert"), own_token(space, "a")
    )
    with channel:
        resp = peer_pb2_grpc.PeerServiceStub(channel).Ping(peer_pb2.PingRequest(), timeout=5)
    assert (resp.responder_id, resp.caller_id, resp.caller_role) == ("b", "a", "enterprise")


# -- certificates ------------------------------------------------------------------------


def _handshake_refused(space: LocalSpace, key: bytes | None, cert: bytes | None) -> None:
    channel = raw_channel(space, "b", key, cert, own_token(space, "a"))
    with channel, pytest.raises(grpc.RpcError) as info:
        peer_pb2_grpc.PeerServiceStub(channel).Ping(peer_pb2.PingRequest(), timeout=5)
    err = info.value
    assert isinstance(err, grpc.RpcError)
    assert err.code() == StatusCode.UNAVAILABLE  # refused in the handshake: no handler ran
    mapped = _mapped(lambda: (_ for _ in ()).throw(err))
    assert "TLS handshake" in str(mapped)


def _mapped(action: Callable[[], object], peer: str = "b") -> Exception:
    try:
        with calling(peer):
            action()
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def test_no_client_certificate_is_refused(space: LocalSpace) -> None:
    _handshake_refused(space, None, None)


def test_certificate_from_another_ca_is_refused(space: LocalSpace, tmp_path: Path) -> None:
    other = init_space(tmp_path / "other", space.space, [("a", Role.ENTERPRISE)])
    me = other.participant("a")
    key = (tmp_path / "other" / me.tls_key).read_bytes()
    cert = (tmp_path / "other" / me.tls_cert).read_bytes()
    _handshake_refused(space, key, cert)
    with pytest.raises(AuthenticationError, match="not issued by the space CA"):
        open_channel(
            "127.0.0.1:1", TlsIdentity(ca_pem(space), cert, key), space=space.space, peer="b"
        )


def test_expired_certificate_is_refused(space: LocalSpace) -> None:
    ca = load_ca(space.pki_dir, space.manifest)
    key = ec.generate_private_key(ec.SECP256R1())
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    cert = issue_participant_certificate(
        ca,
        space.space,
        "a",
        key.public_key(),
        not_before=past,
        not_after=past + dt.timedelta(days=1),
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _handshake_refused(space, key_pem, cert_pem)
    with pytest.raises(AuthenticationError, match="not now"):
        open_channel(
            "127.0.0.1:1",
            TlsIdentity(ca_pem(space), cert_pem, key_pem),
            space=space.space,
            peer="b",
        )


def test_server_impersonating_another_participant_is_refused(space: LocalSpace) -> None:
    # Dial b's address but ask for c: b's certificate does not name c.
    tls = TlsIdentity(ca_pem(space), pem(space, "a", "tls_cert"), pem(space, "a", "tls_key"))
    channel = open_channel(
        f"127.0.0.1:{space.nodes['b'].port}",
        tls,
        space=space.space,
        peer="c",
        token=lambda: own_token(space, "a"),
    )
    with channel:
        err = _mapped(
            lambda: peer_pb2_grpc.PeerServiceStub(channel).Ping(peer_pb2.PingRequest(), timeout=5),
            peer="c",
        )
    assert isinstance(err, AuthenticationError), err
    assert "is not c" in str(err)


# -- membership tokens --------------------------------------------------------------


def test_no_token_is_refused(space: LocalSpace) -> None:
    assert_refused(ping(space, "a", "b", None), StatusCode.UNAUTHENTICATED, "no membership token")


def test_expired_token_is_refused(space: LocalSpace) -> None:
    old = int(time.time()) - 3600
    token = sign(space, claims(space, "a", iat=old, exp=old + 300))
    assert_refused(ping(space, "a", "b", token), StatusCode.UNAUTHENTICATED, "expired")


def test_token_for_another_audience_is_refused(space: LocalSpace) -> None:
    token = sign(space, claims(space, "a", aud="other-city"))
    assert_refused(ping(space, "a", "b", token), StatusCode.UNAUTHENTICATED, "another data space")


def test_token_from_another_issuer_is_refused(space: LocalSpace) -> None:
    token = sign(space, claims(space, "a", iss="urn:tds:city:participant:a"))
    assert_refused(ping(space, "a", "b", token), StatusCode.UNAUTHENTICATED, "not issued by")


def test_token_signed_by_another_key_is_refused(space: LocalSpace) -> None:
    token = sign(space, claims(space, "a", role="government"), ed25519.Ed25519PrivateKey.generate())
    assert_refused(ping(space, "a", "b", token), StatusCode.UNAUTHENTICATED, "signature")


def test_alg_none_is_refused(space: LocalSpace) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "tds-membership+jwt"}).encode())
    token = f"{header}.{b64(json.dumps(claims(space, 'a')).encode())}."
    assert_refused(ping(space, "a", "b", token), StatusCode.UNAUTHENTICATED, "'none'")


def test_hs256_with_operator_public_key_as_secret_is_refused(space: LocalSpace) -> None:
    public = (
        operator_key(space)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "tds-membership+jwt"}).encode())
    body = b64(json.dumps(claims(space, "a")).encode())
    mac = hmac.new(public, f"{header}.{body}".encode(), hashlib.sha256).digest()
    token = f"{header}.{body}.{b64(mac)}"
    assert_refused(ping(space, "a", "b", token), StatusCode.UNAUTHENTICATED, "'HS256'")


def test_token_bound_to_a_different_certificate_is_refused(space: LocalSpace) -> None:
    token = sign(space, claims(space, "a", cnf={"x5t#S256": b64(b"\0" * 32)}))
    assert_refused(
        ping(space, "a", "b", token), StatusCode.UNAUTHENTICATED, "bound to a different certificate"
    )


def test_token_whose_subject_differs_from_the_certificate_is_refused(space: LocalSpace) -> None:
    # c's genuine token, presented over a's certificate.
    assert_refused(
        ping(space, "a", "b", own_token(space, "c")),
        StatusCode.UNAUTHENTICATED,
        "is for 'c' but the certificate names 'a'",
    )


def test_revocation_list_is_not_accepted_as_a_token(space: LocalSpace) -> None:
    rl = sign_revocation_list(
        operator_key(space),
        issuer=space.nodes["a"].issuer,
        space=space.space,
        revocations=RevocationList(1, int(time.time()), frozenset(), frozenset()),
    )
    assert_refused(ping(space, "a", "b", rl), StatusCode.UNAUTHENTICATED, "type")


def test_tampered_token_is_refused(space: LocalSpace) -> None:
    header, body, sig = own_token(space, "a").split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["role"] = "government"
    token = f"{header}.{b64(json.dumps(payload).encode())}.{sig}"
    assert_refused(ping(space, "a", "b", token), StatusCode.UNAUTHENTICATED, "signature")


# -- roles and revocation --------------------------------------------------------------


def test_admin_only_call_from_a_member_is_refused(space: LocalSpace) -> None:
    channel = raw_channel(
        space,
        space.manifest.operator_id,
        pem(space, "a", "tls_key"),
        pem(space, "a", "tls_cert"),
        own_token(space, "a"),
    )
    with channel, pytest.raises(grpc.RpcError) as info:
        registry_pb2_grpc.RegistryServiceStub(channel).Revoke(
            registry_pb2.RevokeRequest(participant_id="b", reason="x"), timeout=5
        )
    err = info.value
    assert isinstance(err, grpc.RpcError)
    assert_refused(err, StatusCode.PERMISSION_DENIED, "administrator certificate")


def test_admin_certificate_of_another_participant_is_refused(space: LocalSpace) -> None:
    channel = raw_channel(space, "b", pem(space, "a", "admin_key"), pem(space, "a", "admin_cert"))
    with channel, pytest.raises(grpc.RpcError) as info:
        admin_pb2_grpc.AdminServiceStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
    err = info.value
    assert isinstance(err, grpc.RpcError)
    assert_refused(err, StatusCode.PERMISSION_DENIED, "administrator certificate of 'b'")


def test_own_admin_certificate_is_accepted(space: LocalSpace) -> None:
    channel = raw_channel(space, "b", pem(space, "b", "admin_key"), pem(space, "b", "admin_cert"))
    with channel:
        status = admin_pb2_grpc.AdminServiceStub(channel).GetStatus(
            admin_pb2.GetStatusRequest(), timeout=5
        )
    assert status.participant_id == "b"
    assert status.token_expires_at > time.time()
    assert status.revocation_list_issued_at > 0


def test_admin_certificate_cannot_make_member_calls(space: LocalSpace) -> None:
    channel = raw_channel(
        space,
        "b",
        pem(space, "a", "admin_key"),
        pem(space, "a", "admin_cert"),
        own_token(space, "a"),
    )
    with channel, pytest.raises(grpc.RpcError) as info:
        peer_pb2_grpc.PeerServiceStub(channel).Ping(peer_pb2.PingRequest(), timeout=5)
    err = info.value
    assert isinstance(err, grpc.RpcError)
    assert_refused(err, StatusCode.PERMISSION_DENIED, "administrator certificates")


def test_revoked_participant_is_refused(space: LocalSpace) -> None:
    token = own_token(space, "c")  # still within its lifetime after the revocation
    space.revoke("c", "test: revoked")
    space.refresh()
    assert_refused(ping(space, "c", "b", token), StatusCode.UNAUTHENTICATED, "revoked")
    # and the registry no longer issues it tokens
    channel = raw_channel(
        space, space.manifest.operator_id, pem(space, "c", "tls_key"), pem(space, "c", "tls_cert")
    )
    with channel, pytest.raises(grpc.RpcError) as info:
        registry_pb2_grpc.RegistryServiceStub(channel).IssueToken(
            registry_pb2.IssueTokenRequest(), timeout=5
        )
    err = info.value
    assert isinstance(err, grpc.RpcError)
    assert_refused(err, StatusCode.UNAUTHENTICATED, "revoked")


def test_identity_comes_from_credentials_not_request(space: LocalSpace) -> None:
    # PingRequest carries nothing; the registry's Lookup names a participant but the caller
    # is still who the certificate says: a's token cannot fetch b's token.
    channel = raw_channel(
        space, space.manifest.operator_id, pem(space, "a", "tls_key"), pem(space, "a", "tls_cert")
    )
    with channel:
        resp = registry_pb2_grpc.RegistryServiceStub(channel).IssueToken(
            registry_pb2.IssueTokenRequest(), timeout=5
        )
    assert jwt.decode(resp.token, options={"verify_signature": False})["sub"] == "a"


def test_the_client_sends_the_token_it_holds_at_each_call(space: LocalSpace) -> None:
    me = space.manifest.participant("a")
    tls = TlsIdentity.load(
        space.pki_dir / "ca.pem", space.pki_dir / me.tls_cert, space.pki_dir / me.tls_key
    )
    asked: list[int] = []

    def token() -> str:  # a connector's token is refreshed while its channels live on
        asked.append(1)
        if len(asked) > 2:
            raise AuthenticationError("no membership token held")
        return own_token(space, "a")

    address = f"127.0.0.1:{space.nodes['b'].port}"
    with open_channel(address, tls, space=space.space, peer="b", token=token) as channel:
        stub = peer_pb2_grpc.PeerServiceStub(channel)
        for _ in range(2):
            assert stub.Ping(peer_pb2.PingRequest(), timeout=5).caller_id == "a"
        with pytest.raises(AuthenticationError, match="no membership token"):
            stub.Ping(peer_pb2.PingRequest(), timeout=5)
    assert len(asked) == 3


# -- malformed requests (issue 18, finding 7) -------------------------------------------


def raw_call(
    channel: grpc.Channel, method: str, body: bytes, timeout: float = 5
) -> grpc.RpcError | None:
    """Send ``body`` as the request of ``method`` exactly as given (no serializer)."""
    try:
        channel.unary_unary(method)(body, timeout=timeout)
    except grpc.RpcError as err:
        return err
    return None


def member_channel(space: LocalSpace, caller: str, target: str, token: bool = True) -> grpc.Channel:
    key, cert = pem(space, caller, "tls_key"), pem(space, caller, "tls_cert")
    return raw_channel(space, target, key, cert, own_token(space, caller) if token else None)


def test_nul_in_a_string_field_is_invalid_argument_naming_the_field(space: LocalSpace) -> None:
    # On PostgreSQL this reached the driver and came back INTERNAL with a traceback logged;
    # now every store is spared it: the field is refused at the server boundary.
    body = catalog_pb2.GetProductRequest(product_id="p\x00").SerializeToString()
    with member_channel(space, "a", "b") as channel:
        err = raw_call(channel, "/tds.v1.CatalogService/GetProduct", body)
    assert err is not None
    assert_refused(err, StatusCode.INVALID_ARGUMENT, "product_id contains a NUL character")


def test_nul_in_a_map_value_of_an_admin_call_is_invalid_argument(space: LocalSpace) -> None:
    op = space.manifest.operator_id
    request = registry_pb2.EnrolRequest(
        participant_id="zz", role="enterprise", address="127.0.0.1:1", attributes={"k": "v\x00"}
    )
    channel = raw_channel(space, op, pem(space, op, "admin_key"), pem(space, op, "admin_cert"))
    with channel:
        err = raw_call(channel, "/tds.v1.RegistryService/Enrol", request.SerializeToString())
    assert err is not None
    assert_refused(err, StatusCode.INVALID_ARGUMENT, "attributes['k'] contains a NUL")


def test_malformed_protobuf_is_invalid_argument_not_internal(space: LocalSpace) -> None:
    garbage = b"\xff\xff\xff\xff"  # field 0 / truncated varint: no protobuf parser accepts it
    with member_channel(space, "a", "b") as channel:
        for method in ("/tds.v1.PeerService/Ping", "/tds.v1.CatalogService/GetProduct"):
            err = raw_call(channel, method, garbage)
            assert err is not None
            assert_refused(err, StatusCode.INVALID_ARGUMENT, "is not a valid tds.v1.")


def test_malformed_protobuf_without_a_token_is_unauthenticated_first(space: LocalSpace) -> None:
    with member_channel(space, "a", "b", token=False) as channel:
        err = raw_call(channel, "/tds.v1.CatalogService/GetProduct", b"\xff\xff\xff\xff")
    assert err is not None
    assert_refused(err, StatusCode.UNAUTHENTICATED, "no membership token")


@pytest.mark.postgres
def test_nul_reaching_a_postgresql_store_is_invalid_request(postgres_url: str) -> None:
    # Callers other than gRPC (the CLI, the library) are covered by the store itself.
    from sqlalchemy import text

    from connector.errors import InvalidRequest
    from connector.store.database import open_database

    db = open_database(postgres_url)
    try:
        with pytest.raises(InvalidRequest, match="NUL"), db.transaction() as tx:
            tx.execute("SELECT ?::text", ("a\x00b",))
        with pytest.raises(InvalidRequest, match="NUL"), db.session() as session:
            session.execute(text("SELECT :v"), {"v": "a\x00b"})
    finally:
        db.close()

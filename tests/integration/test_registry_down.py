"""A dead registry must not stop agreements that are already FINALIZED (issue 18, finding 5).

Members look peers up in the operator-signed directory they cache in their database: with
the registry stopped, a transfer under an existing agreement completes; past the maximum
staleness it is refused UNAVAILABLE, saying how old the cache is; a cache someone edited
is refused; and a participant the revocation list names is not brought back by a cached
directory that still lists it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import admin_pb2, registry_pb2, registry_pb2_grpc
from connector.config import RegistryConfig
from connector.demo.space import LocalSpace
from connector.errors import VerificationError
from connector.identity.certs import load_ed25519_public_key
from connector.identity.names import Role
from connector.node.clients import member_channel
from connector.registry.cache import DirectoryCache
from connector.registry.client import _STORED_HEAD_CHECK_S, RegistryClient
from connector.registry.directory import directory_entries, sign_directory_head
from connector.store.models import DirectoryCacheRow
from tests.support.exchange import admin, agree, offer, publish

SIZE = 256 * 1024


class SkewedClock:
    """The wall clock moved by ``offset`` seconds: time passes for one connector only."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("registry-down")
    data = root / "provider-data"
    data.mkdir()
    (data / "f.bin").write_bytes(os.urandom(SIZE))
    parts = [
        ("gov", Role.GOVERNMENT),
        ("gov2", Role.GOVERNMENT),
        ("a", Role.ENTERPRISE),
        ("b", Role.ENTERPRISE),
        ("c", Role.ENTERPRISE),
    ]
    with LocalSpace.create(root, parts) as sp:
        sp.start_registry()
        sp.start_connector("gov")
        sp.start_connector("gov2")
        clock = SkewedClock()
        # a: a short maximum staleness, and a clock the test moves on.
        sp.start_connector(
            "a",
            registry_settings=RegistryConfig(
                directory_refresh_seconds=30, directory_max_age_seconds=60
            ),
            clock=clock,
        )
        # b: no directory refresh during the test, so its cache predates the revocation.
        sp.start_connector(
            "b",
            registry_settings=RegistryConfig(
                directory_refresh_seconds=600, directory_max_age_seconds=1200
            ),
        )
        c_clock = SkewedClock()
        # c: a revocation list that outlives its token, so the token runs out first.
        sp.start_connector(
            "c", registry_settings=RegistryConfig(revocation_max_age_seconds=900), clock=c_clock
        )
        for provider in ("gov", "gov2"):
            publish(
                sp,
                provider,
                {
                    "id": "f",
                    "title": "f",
                    "grade": "general",
                    "source": {"kind": "file", "path": "f.bin"},
                    "offers": [offer()],
                },
                data,
            )
        sp.agreements = {  # type: ignore[attr-defined]
            "a": agree(sp, "gov", "a", "f"),
            "b": agree(sp, "gov2", "b", "f"),
            "c": agree(sp, "gov", "c", "f"),
        }
        sp.clock = clock  # type: ignore[attr-defined]
        sp.c_clock = c_clock  # type: ignore[attr-defined]
        # gov2 is revoked; b learns it from the revocation list, not from its directory.
        sp.revoke("gov2", "licence withdrawn")
        b = sp.nodes["b"].registry
        assert b is not None
        b.refresh_revocations()
        yield sp


@pytest.fixture(scope="module")
def down(space: LocalSpace) -> LocalSpace:
    """The space with its registry stopped (for good: the tests after need it so)."""
    space.nodes.pop(space.manifest.operator_id).stop(grace=0)
    return space


def test_an_unchanged_directory_is_refreshed_with_a_signed_head_alone(space: LocalSpace) -> None:
    registry = space.nodes["c"].registry
    assert registry is not None
    held = registry.refresh_directory()
    cfg = space.configs["c"]
    with member_channel(cfg, registry, cfg.registry.operator_id, space.registry_address) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        again = stub.GetDirectory(
            registry_pb2.GetDirectoryRequest(held_digest=held.digest), timeout=10
        )
        full = stub.GetDirectory(registry_pb2.GetDirectoryRequest(), timeout=10)
    assert again.entries == "" and again.head
    assert full.entries == held.signed.entries
    fresh = registry.refresh_directory()  # through the head-only answer
    assert fresh.digest == held.digest and fresh.issued_at >= held.issued_at
    assert set(fresh.participants) == {"operator", "gov", "gov2", "a", "b", "c"}


def _transfer(space: LocalSpace, who: str) -> admin_pb2.TransferProgress:
    agreement = space.agreements[who]  # type: ignore[attr-defined]
    last = None
    for event in admin(space, who).Transfer(
        admin_pb2.TransferRequest(agreement_id=agreement), timeout=60
    ):
        last = event
    assert last is not None
    return last


def _refused(space: LocalSpace, who: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _transfer(space, who)
    err = caught.value
    assert isinstance(err, grpc.RpcError)
    return err


def test_a_transfer_under_a_finalized_agreement_completes_while_the_registry_is_down(
    down: LocalSpace,
) -> None:
    done = _transfer(down, "c")
    assert done.event == "completed"
    assert done.transfer.state == "completed" and done.size == SIZE
    assert done.receipt_id


def test_past_the_maximum_staleness_a_transfer_is_refused_unavailable_saying_how_old(
    down: LocalSpace,
) -> None:
    space = down
    space.clock.offset = 90  # type: ignore[attr-defined]
    try:
        err = _refused(space, "a")
    finally:
        space.clock.offset = 0  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    details = err.details() or ""
    assert "the registry is unreachable and the cached directory is" in details, details
    assert "s old (max 60)" in details, details


def test_the_cached_revocation_list_still_applies_to_a_cached_directory(
    down: LocalSpace,
) -> None:
    space = down
    b = space.nodes["b"].registry
    assert b is not None
    held = b.directory_held
    assert held is not None and not held.participants["gov2"].revoked  # cached before
    err = _refused(space, "b")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "gov2 is revoked" in (err.details() or "")


def test_once_its_token_expires_a_member_says_the_registry_cannot_issue_another(
    down: LocalSpace,
) -> None:
    registry = down.nodes["c"].registry
    assert registry is not None
    # Past the token's expiry, within the directory's maximum age (3600 s).
    down.c_clock.offset = registry.token_expires_at - time.time() + 5  # type: ignore[attr-defined]
    try:
        err = _refused(down, "c")
    finally:
        down.c_clock.offset = 0  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    details = err.details() or ""
    assert "the membership token expired" in details, details
    assert "registry is unreachable to issue a new one" in details, details


def _forged_head(space: LocalSpace, entries: str) -> str:
    """A head over ``entries``, fresh, but signed by someone other than the operator."""
    return sign_directory_head(
        ed25519.Ed25519PrivateKey.generate(),
        issuer=f"urn:tds:{space.space}:participant:{space.manifest.operator_id}",
        space=space.space,
        entries=entries,
        issued_at=int(time.time()),
    )


def test_a_tampered_cached_directory_is_refused(down: LocalSpace) -> None:
    space = down
    node = space.nodes["c"]
    assert node.db is not None and node.registry is not None
    held = node.registry.directory_held
    assert held is not None
    gov = held.participants["gov"]
    moved = {**held.participants, "gov": type(gov)(**{**gov.__dict__, "address": "10.9.9.9:1"})}
    edited = directory_entries(list(moved.values()))
    cfg = space.configs["c"]

    # An edited entry under the operator's own head: a replica reading the cache refuses it.
    with node.db.session() as s:
        row = s.get(DirectoryCacheRow, space.space)
        assert row is not None
        row.entries = edited
        s.add(row)
    replica = RegistryClient(
        address=cfg.registry.address,
        space=space.space,
        operator_id=cfg.registry.operator_id,
        issuer=f"urn:tds:{space.space}:participant:{cfg.registry.operator_id}",
        tls=node._tls.identity,  # type: ignore[union-attr]
        operator_key=load_ed25519_public_key(cfg.pki.operator_public_key, "operator key"),
        clock=node.clock,
        call_timeout_seconds=1,
        directory_cache=DirectoryCache(node.db, space.space),
    )
    try:
        with pytest.raises(VerificationError, match="do not match the digest"):
            replica.lookup("gov")
    finally:
        replica.close()

    # A fresh head signed by another key: the connector itself refuses to use it.
    with node.db.session() as s:
        row = s.get(DirectoryCacheRow, space.space)
        assert row is not None
        row.head = _forged_head(space, edited)
        s.add(row)
    # The connector reads the stored head at most every _STORED_HEAD_CHECK_S; until then it
    # keeps using the copy it verified itself, never the forged one.
    time.sleep(_STORED_HEAD_CHECK_S + 0.05)
    err = _refused(space, "c")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.details() or ""
    assert "does not verify" in details and "signature" in details, details

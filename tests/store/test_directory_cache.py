"""The member's cache of the operator-signed directory, on SQLite and on PostgreSQL: what a
connector whose registry does not answer reads from it, and what it refuses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.clock import FixedClock
from connector.errors import Unavailable, VerificationError
from connector.identity.names import Role
from connector.identity.pki import init_space
from connector.registry.cache import DirectoryCache
from connector.registry.client import RegistryClient
from connector.registry.directory import (
    PeerInfo,
    SignedDirectory,
    directory_entries,
    sign_directory_head,
    verify_directory,
)
from connector.rpc.channel import TlsIdentity
from connector.store.database import Database

KEY = ed25519.Ed25519PrivateKey.generate()
ISSUER = "urn:tds:city:participant:operator"


def peer(pid: str, *, revoked: bool = False) -> PeerInfo:
    return PeerInfo(
        id=pid,
        role="government",
        address=f"{pid}.example:7000",
        signing_public_key=bytes(32),
        certificate_thumbprint=f"t-{pid}",
        revoked=revoked,
        enrolled_at=1,
        attributes={"org": pid.upper()},
    )


def signed(
    issued_at: int, *peers: PeerInfo, key: ed25519.Ed25519PrivateKey = KEY
) -> SignedDirectory:
    entries = directory_entries(list(peers))
    head = sign_directory_head(
        key, issuer=ISSUER, space="city", entries=entries, issued_at=issued_at
    )
    return SignedDirectory(head, entries)


def store(cache: DirectoryCache, pair: SignedDirectory) -> None:
    """Write ``pair`` over whatever the row holds, as anyone with the database could."""
    fresh = verify_directory(pair, KEY.public_key(), issuer=ISSUER, space="city")
    cache.save(fresh, lambda _stored: False, now_ms=0)


def forge(db: Database, pair: SignedDirectory) -> None:
    from connector.store.models import DirectoryCacheRow

    with db.session() as s:
        row = s.get(DirectoryCacheRow, "city")
        assert row is not None
        row.head, row.entries = pair.head, pair.entries
        s.add(row)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsIdentity:
    out = tmp_path_factory.mktemp("pki")
    me = init_space(out, "city", [("a", Role.ENTERPRISE)]).participant("a")
    return TlsIdentity.load(out / "ca.pem", out / me.tls_cert, out / me.tls_key)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1000)


@pytest.fixture
def cache(db: Database) -> DirectoryCache:
    return DirectoryCache(db, "city")


@pytest.fixture
def client(tls: TlsIdentity, clock: FixedClock, cache: DirectoryCache) -> Iterator[RegistryClient]:
    # A registry address where nothing listens: every fetch fails as with a dead registry.
    c = RegistryClient(
        address="127.0.0.1:1",
        space="city",
        operator_id="operator",
        issuer=ISSUER,
        tls=tls,
        operator_key=KEY.public_key(),
        clock=clock,
        call_timeout_seconds=2,
        directory_cache=cache,
        directory_refresh_seconds=30,
        directory_max_age_seconds=600,
    )
    yield c
    c.close()


def test_peers_are_looked_up_in_the_cache_until_it_is_too_old(
    client: RegistryClient, cache: DirectoryCache, clock: FixedClock
) -> None:
    store(cache, signed(1000, peer("gov")))
    clock.advance(599)
    assert client.lookup("gov").address == "gov.example:7000"
    clock.advance(2)
    with pytest.raises(Unavailable, match=r"cached directory is 601 s old \(max 600\)"):
        client.lookup("gov")


def test_a_participant_missing_from_the_cache_is_unavailable_not_unknown(
    client: RegistryClient, cache: DirectoryCache
) -> None:
    store(cache, signed(1000, peer("gov")))
    with pytest.raises(Unavailable, match="'new' is not in the cached directory"):
        client.lookup("new")


def test_without_a_cache_a_dead_registry_is_unavailable(client: RegistryClient) -> None:
    with pytest.raises(Unavailable, match="no cached directory yet"):
        client.lookup("gov")


def test_an_older_authentic_copy_does_not_undo_a_newer_one(
    client: RegistryClient, cache: DirectoryCache, db: Database
) -> None:
    store(cache, signed(1000, peer("gov"), peer("ent", revoked=True)))
    assert client.lookup("ent").revoked
    forge(db, signed(900, peer("gov"), peer("ent")))  # from before the revocation
    assert client.lookup("ent").revoked
    assert client.directory().issued_at == 1000


@pytest.mark.parametrize("tamper", ["entries", "head"])
def test_a_cache_someone_edited_is_refused(
    client: RegistryClient, cache: DirectoryCache, db: Database, tamper: str
) -> None:
    store(cache, signed(1000, peer("gov")))
    moved = PeerInfo(**{**peer("gov").__dict__, "address": "10.9.9.9:1"})
    if tamper == "entries":  # the operator's head over entries someone rewrote
        forged = SignedDirectory(signed(1000, peer("gov")).head, directory_entries([moved]))
        match = "do not match the digest"
    else:  # consistent, fresh, but signed by someone else
        forged = signed(1100, moved, key=ed25519.Ed25519PrivateKey.generate())
        match = "signature"
    forge(db, forged)
    with pytest.raises(VerificationError, match=match):
        client.lookup("gov")
    assert client.directory_held is None


def test_a_replica_keeps_the_newer_copy_and_rewrites_entries_only_when_they_change(
    cache: DirectoryCache,
) -> None:
    newer = verify_directory(
        signed(2000, peer("gov")), KEY.public_key(), issuer=ISSUER, space="city"
    )
    older = verify_directory(
        signed(1000, peer("gov")), KEY.public_key(), issuer=ISSUER, space="city"
    )
    cache.save(newer, lambda _stored: False, now_ms=1)
    cache.save(older, lambda _stored: True, now_ms=2)  # the row's copy is newer: kept
    assert cache.load() == newer.signed
    cache.save(older, lambda _stored: False, now_ms=3)
    assert cache.load() == older.signed


def test_a_directory_signed_in_the_same_second_replaces_the_one_held(
    client: RegistryClient, cache: DirectoryCache, db: Database
) -> None:
    store(cache, signed(1000, peer("gov")))
    client.lookup("gov")
    forge(db, signed(1000, peer("gov"), peer("new")))  # a replica fetched it a moment later
    assert client.lookup("new").address == "new.example:7000"


def test_the_head_alone_is_the_stored_pairs_head(cache: DirectoryCache) -> None:
    """``head`` (read before calls to members, without the entries) is the head of the
    pair stored now, and None before any is."""
    assert cache.head() is None
    first, second = signed(1000, peer("gov")), signed(2000, peer("gov"), peer("lab"))
    store(cache, first)
    assert cache.head() == first.head
    store(cache, second)
    assert cache.head() == second.head != first.head

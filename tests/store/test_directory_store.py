"""Directory store contract: the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from connector.errors import ConflictError, NotFound, PreconditionFailed
from connector.registry.store import DirectoryEntry, SqlDirectoryStore
from connector.store.database import Database, open_database


@pytest.fixture
def store(db: Database) -> SqlDirectoryStore:
    return SqlDirectoryStore(db)


def entry(pid: str, serial: str = "", role: str = "enterprise", **kw: object) -> DirectoryEntry:
    args: dict[str, object] = dict(
        id=pid,
        role=role,
        address=f"{pid}.example:7000",
        signing_public_key=b"k" * 32,
        certificate_pem="-----BEGIN CERTIFICATE-----",
        certificate_thumbprint=f"t-{pid}",
        certificate_serial=serial or f"5e{len(pid)}{pid.encode().hex()}",
        attributes={"org": pid.upper()},
    )
    args.update(kw)
    return DirectoryEntry(**args)  # type: ignore[arg-type]


def test_migrations_are_idempotent(database_url: str, db: Database) -> None:
    again = open_database(database_url)
    again.close()


def test_enrol_get_and_list(store: SqlDirectoryStore) -> None:
    store.enrol(entry("b"), replace=False, now=10)
    store.enrol(entry("a", role="government"), replace=False, now=11)
    got = store.get("a")
    assert (got.role, got.attributes, got.enrolled_at, got.revoked) == (
        "government",
        {"org": "A"},
        11,
        False,
    )
    assert got.signing_public_key == b"k" * 32
    assert [e.id for e in store.list()] == ["a", "b"]
    assert [e.id for e in store.list("enterprise")] == ["b"]


def test_unknown_participant_is_not_found(store: SqlDirectoryStore) -> None:
    with pytest.raises(NotFound):
        store.get("nobody")
    with pytest.raises(NotFound):
        store.revoke("nobody", "x", now=1)


def test_duplicate_enrolment_conflicts_and_changes_nothing(store: SqlDirectoryStore) -> None:
    store.enrol(entry("a"), replace=False, now=1)
    with pytest.raises(ConflictError, match="already enrolled"):
        store.enrol(entry("a", address="other:1"), replace=False, now=2)
    assert store.get("a").address == "a.example:7000"


def test_replacing_a_certificate_revokes_the_old_one(store: SqlDirectoryStore) -> None:
    store.enrol(entry("a", serial="aa"), replace=False, now=1)
    store.enrol(entry("a", serial="bb", certificate_thumbprint="t2"), replace=True, now=2)
    assert store.get("a").certificate_thumbprint == "t2"
    rl = store.revocations(now=3)
    assert rl.certificate_serials == {"aa"} and rl.participants == frozenset()
    with pytest.raises(PreconditionFailed, match="revoked"):
        store.enrol(entry("a", serial="aa"), replace=True, now=4)


def test_revocation_is_monotonic_and_final(store: SqlDirectoryStore) -> None:
    store.enrol(entry("a", serial="aa"), replace=False, now=1)
    store.enrol(entry("b", serial="bb"), replace=False, now=1)
    before = store.revocations(now=2).serial
    serial = store.revoke("a", "left the space", now=5)
    assert serial > before
    rl = store.revocations(now=6)
    assert rl.serial == serial and rl.participants == {"a"} and "aa" in rl.certificate_serials
    got = store.get("a")
    assert (got.revoked, got.revoked_at, got.revoked_reason) == (True, 5, "left the space")
    with pytest.raises(PreconditionFailed, match="already revoked"):
        store.revoke("a", "again", now=7)
    with pytest.raises(PreconditionFailed, match="revoked"):
        store.enrol(entry("a", serial="cc"), replace=True, now=8)
    assert store.revocations(now=9).serial == serial


def test_concurrent_enrolments_of_one_id_admit_exactly_one(store: SqlDirectoryStore) -> None:
    results: list[str] = []
    barrier = threading.Barrier(6)

    def enrol(i: int) -> None:
        barrier.wait()
        try:
            store.enrol(entry("race", serial=f"{i:x}"), replace=False, now=i)
            results.append("ok")
        except ConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=enrol, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 5 + ["ok"]
    assert [e.id for e in store.list()] == ["race"]

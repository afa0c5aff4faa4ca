"""Evidence end to end: fetch with cosigning, offline verify, tampering, reconcile, access."""

from __future__ import annotations

import base64
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from connector._proto.tds.v1 import audit_pb2, audit_pb2_grpc
from connector.audit.checkpoint import Checkpoint, sign_checkpoint
from connector.audit.receipts import (
    Receipt,
    countersign_receipt,
    parse_receipt,
    sign_receipt,
)
from connector.audit.verify import reconcile, verify
from connector.audit.window_receipts import (
    WindowReceipt,
    countersign_window,
    parse_window,
    sign_window,
)
from connector.cli.main import main
from connector.demo.space import LocalSpace
from connector.identity.certs import load_ed25519_private_key
from connector.identity.names import Role
from connector.sources.windows import Window, genesis_head
from tests.integration.test_authentication import own_token, pem, raw_channel
from tests.unit.audit.independent_note import verify_signed_note


def signing_key(space: LocalSpace, participant: str):  # type: ignore[no-untyped-def]
    me = space.manifest.participant(participant)
    return load_ed25519_private_key(space.pki_dir / me.signing_key)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("audit")
    participants = [("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE), ("aud", Role.AUDITOR)]
    with LocalSpace.create(root, participants) as sp:
        sp.start_registry()
        sp.start_connector("a")
        sp.start_connector("b")
        sp.enrol("aud", "")
        sp.write_config("aud", "", sp.registry_address)
        la, lb = sp.nodes["a"].log, sp.nodes["b"].log
        assert la is not None and lb is not None
        keys = {p: signing_key(sp, p).public_key() for p in ("a", "b")}
        for t in range(4):
            la.record("transfer.start", parties=["b"], data={"transfer": f"t{t}", "product": "p1"})
            lb.record("transfer.start", parties=["a"], data={"transfer": f"t{t}", "product": "p1"})
            receipt = Receipt(
                agreement="ag-1",
                transfer=f"t{t}",
                product="p1",
                provider="a",
                consumer="b",
                size=1000 + t,
                sha256="ab" * 32,
                started_ms=1_800_000_000_000,
                ended_ms=1_800_000_001_000,
                provider_log_index=la.size - 1,
                consumer_log_index=lb.size - 1,
            )
            signed = countersign_receipt(
                sign_receipt(receipt, signing_key(sp, "b")), signing_key(sp, "a"), keys.__getitem__
            )
            for lg, other in ((la, "b"), (lb, "a")):
                lg.record(
                    "transfer.receipt", parties=[other], data={"receipt": signed, "product": "p1"}
                )
            for i in range(5):
                la.record(
                    "policy.decision",
                    parties=["b" if i % 2 else "c"],
                    data={"i": i, "product": "p1"},
                )
            la.checkpoint()
        # Two windows of a stream a provides to b, each countersigned and in both logs.
        head = genesis_head("ag-2").hex()
        for index in range(2):
            window = Window(
                index, 10 * index + 1, 10 * index + 10, 10, 500, head, f"{index:02x}" * 32
            )
            head = window.head
            signed = countersign_window(
                sign_window(WindowReceipt("ag-2", "rain", "a", "b", window), signing_key(sp, "b")),
                signing_key(sp, "a"),
                keys.__getitem__,
            )
            for lg, other in ((la, "b"), (lb, "a")):
                lg.record(
                    "stream.window", parties=[other], data={"agreement": "ag-2", "receipt": signed}
                )
        la.checkpoint()
        aud = str(root / "aud.toml")
        assert (
            main(
                [
                    "audit",
                    "fetch",
                    "--config",
                    aud,
                    "--connector",
                    "a",
                    "--out",
                    str(root / "exp-a"),
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "audit",
                    "fetch",
                    "--config",
                    aud,
                    "--connector",
                    "b",
                    "--out",
                    str(root / "exp-b"),
                ]
            )
            == 0
        )
        yield {"space": sp, "root": root}


def export(world: dict[str, object], name: str, tmp_path: Path) -> Path:
    root = world["root"]
    assert isinstance(root, Path)
    target = tmp_path / name
    shutil.copytree(root / name, target)
    return target


def known_note(world: dict[str, object]) -> str:
    root = world["root"]
    assert isinstance(root, Path)
    return str(
        json.loads((root / "data" / "aud" / "witness" / "tds_city_a.json").read_text())["note"]
    )


def test_fetched_exports_verify_with_cosignatures(world: dict[str, object]) -> None:
    root = world["root"]
    assert isinstance(root, Path)
    report = verify(root / "exp-a", known=[known_note(world)])
    assert report.ok, report.problems
    assert report.receipts == 6 and report.cosignatures == {"aud": 1}
    assert report.checkpoints >= 4
    assert verify(root / "exp-b").ok


def test_checkpoint_verifies_with_an_independent_implementation(world: dict[str, object]) -> None:
    root = world["root"]
    assert isinstance(root, Path)
    manifest = json.loads((root / "exp-a" / "manifest.json").read_text())
    latest = sorted((root / "exp-a" / "checkpoints").glob("*.note"))[-1].read_text()
    body = verify_signed_note(latest, manifest["vkey"])
    origin, size, root_b64 = body.splitlines()
    assert origin == "tds/city/a" and int(size) == manifest["size"]
    assert len(base64.b64decode(root_b64)) == 32


def test_reconcile_matches_receipts_in_both_logs(world: dict[str, object], tmp_path: Path) -> None:
    root = world["root"]
    assert isinstance(root, Path)
    result = reconcile(root / "exp-a", root / "exp-b")
    assert result["ok"] and result["matched"] == 6 and result["windows"] == 2
    # Drop one receipt from b's export: reconcile lists it.
    b = export(world, "exp-b", tmp_path)
    lines = (b / "entries.jsonl").read_bytes().splitlines(keepends=True)

    def is_t2_receipt(line: bytes) -> bool:
        entry = json.loads(line)
        return bool(
            entry["kind"] == "transfer.receipt"
            and parse_receipt(entry["data"]["receipt"]).transfer == "t2"
        )

    kept = [ln for ln in lines if not is_t2_receipt(ln)]
    (b / "entries.jsonl").write_bytes(b"".join(kept))
    result = reconcile(root / "exp-a", b)
    assert not result["ok"] and result["only_in_a"] == [["ag-1", "t2"]]


def test_cli_verify_prove_show_and_reconcile(
    world: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    root = world["root"]
    assert isinstance(root, Path)
    assert main(["audit", "verify", str(root / "exp-a"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["audit", "prove", str(root / "exp-a"), "--index", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["index"] == 5
    assert main(["audit", "show", str(root / "exp-a"), "--type", "transfer.receipt", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert main(["audit", "reconcile", str(root / "exp-a"), str(root / "exp-b")]) == 0


# -- tampering ------------------------------------------------------------------------


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_flipped_byte_is_found_at_its_index(world: dict[str, object], tmp_path: Path) -> None:
    d = export(world, "exp-a", tmp_path)
    lines = _lines(d / "entries.jsonl")
    lines[7] = lines[7].replace(b'"actor":"a"', b'"actor":"e"')
    (d / "entries.jsonl").write_bytes(b"".join(lines))
    report = verify(d, known=[known_note(world)])
    assert not report.ok and report.first_bad_index == 7


def test_deleted_entry_is_found(world: dict[str, object], tmp_path: Path) -> None:
    d = export(world, "exp-a", tmp_path)
    for name in ("entries.jsonl", "leaf_hashes.txt"):
        lines = _lines(d / name)
        del lines[4]
        (d / name).write_bytes(b"".join(lines))
    report = verify(d, known=[known_note(world)])
    assert not report.ok and report.first_bad_index == 4


def test_swapped_entries_are_found(world: dict[str, object], tmp_path: Path) -> None:
    d = export(world, "exp-a", tmp_path)
    for name in ("entries.jsonl", "leaf_hashes.txt"):
        lines = _lines(d / name)
        lines[2], lines[3] = lines[3], lines[2]
        (d / name).write_bytes(b"".join(lines))
    report = verify(d, known=[known_note(world)])
    assert not report.ok and report.first_bad_index == 2


def test_truncated_log_with_an_old_checkpoint_is_found(
    world: dict[str, object], tmp_path: Path
) -> None:
    d = export(world, "exp-a", tmp_path)
    notes = sorted((d / "checkpoints").glob("*.note"))
    old_size = int(notes[0].read_text().split("\n")[1])
    for extra in notes[1:]:
        extra.unlink()
    for name in ("entries.jsonl", "leaf_hashes.txt"):
        (d / name).write_bytes(b"".join(_lines(d / name)[:old_size]))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["size"] = old_size
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert verify(d).ok  # consistent in itself ...
    report = verify(d, known=[known_note(world)])  # ... but the auditor saw more
    assert not report.ok and report.first_bad_index == old_size
    assert any("truncated" in p.what for p in report.problems)


def test_checkpoint_with_a_bad_signature_is_found(world: dict[str, object], tmp_path: Path) -> None:
    d = export(world, "exp-a", tmp_path)
    note = sorted((d / "checkpoints").glob("*.note"))[1]
    text = note.read_text()
    head, sig = text.rsplit(" ", 1)
    flipped = "A" if sig[20] != "A" else "B"  # inside the signature, past the key ID
    note.write_text(f"{head} {sig[:20]}{flipped}{sig[21:]}")
    report = verify(d)
    assert not report.ok and any("does not verify" in p.what for p in report.problems)


def test_forked_checkpoint_is_found(world: dict[str, object], tmp_path: Path) -> None:
    d = export(world, "exp-a", tmp_path)
    space = world["space"]
    assert isinstance(space, LocalSpace)
    note = sorted((d / "checkpoints").glob("*.note"))[1]
    size = int(note.read_text().split("\n")[1])
    fork = Checkpoint("tds/city/a", size, bytes(32))  # validly signed, other root
    note.write_text(sign_checkpoint(fork, signing_key(space, "a")))
    report = verify(d)
    assert not report.ok and report.first_bad_index is not None


def test_a_thousand_random_mutations_are_all_detected(
    world: dict[str, object], tmp_path: Path
) -> None:
    base = export(world, "exp-a", tmp_path / "base")
    known = [known_note(world)]
    space = world["space"]
    assert isinstance(space, LocalSpace)
    key = signing_key(space, "a")
    rng = random.Random(20261121)
    entries = _lines(base / "entries.jsonl")
    leaves = _lines(base / "leaf_hashes.txt")
    notes = sorted((base / "checkpoints").glob("*.note"))
    work = tmp_path / "m"
    kinds: dict[str, int] = {}
    shutil.copytree(base, work)
    saved_notes = {p.name: p.read_text() for p in notes}
    for n in range(1000):
        # Restore what the previous mutation may have touched (cheaper than a full copy).
        for p in (work / "checkpoints").glob("*.note"):
            p.unlink()
        for name, text in saved_notes.items():
            (work / "checkpoints" / name).write_text(text)
        e, lv = list(entries), list(leaves)
        kind = rng.choice(
            ["flip", "delete", "delete_both", "swap", "truncate", "signature", "fork"]
        )
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "flip":
            i = rng.randrange(len(e))
            j = rng.randrange(len(e[i]) - 1)
            new = rng.choice([c for c in range(32, 127) if c != e[i][j]])
            e[i] = e[i][:j] + bytes([new]) + e[i][j + 1 :]
        elif kind in ("delete", "delete_both"):
            i = rng.randrange(len(e))
            del e[i]
            if kind == "delete_both":
                del lv[i]
        elif kind == "swap":
            i, j = rng.sample(range(len(e)), 2)
            e[i], e[j] = e[j], e[i]
            lv[i], lv[j] = lv[j], lv[i]
        elif kind == "truncate":
            keep = rng.randrange(1, len(e))
            e, lv = e[:keep], lv[:keep]
            for p in (work / "checkpoints").glob("*.note"):
                if int(p.read_text().split("\n")[1]) > keep:
                    p.unlink()
        elif kind == "signature":
            p = work / "checkpoints" / rng.choice(notes).name
            text = p.read_text()
            head, sig = text.rsplit(" ", 1)
            k = rng.randrange(len(sig) - 3)
            sig = sig[:k] + ("A" if sig[k] != "A" else "B") + sig[k + 1 :]
            p.write_text(f"{head} {sig}")
        else:
            p = work / "checkpoints" / rng.choice(notes).name
            size = int(p.read_text().split("\n")[1])
            p.write_text(sign_checkpoint(Checkpoint("tds/city/a", size, rng.randbytes(32)), key))
        (work / "entries.jsonl").write_bytes(b"".join(e))
        (work / "leaf_hashes.txt").write_bytes(b"".join(lv))
        report = verify(work, known=known)
        assert not report.ok, f"mutation {n} ({kind}) went undetected"
    assert len(kinds) == 7


# -- witnessing and access ----------------------------------------------------------------


def test_fork_is_refused_by_the_witness_and_logged(
    world: dict[str, object], tmp_path: Path
) -> None:
    space = world["space"]
    root = world["root"]
    assert isinstance(space, LocalSpace) and isinstance(root, Path)
    state = root / "data" / "aud" / "witness" / "tds_city_a.json"
    saved = state.read_text()
    seen = json.loads(saved)
    forged = sign_checkpoint(
        Checkpoint("tds/city/a", seen["size"], bytes(32)), signing_key(space, "a")
    )
    state.write_text(json.dumps({**seen, "note": forged}))
    la = space.nodes["a"].log
    assert la is not None
    la.record("test.grow", parties=[], data={})
    try:
        code = main(
            [
                "audit",
                "fetch",
                "--config",
                str(root / "aud.toml"),
                "--connector",
                "a",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        assert code == 1
        assert list((state.parent / "evidence").glob("tds_city_a-*.json"))
        last = la.entries(la.size - 1, la.size)[0][1]
        assert b"audit.cosign_refused" in last
    finally:
        state.write_text(saved)


def test_members_see_only_entries_naming_them(world: dict[str, object]) -> None:
    space = world["space"]
    assert isinstance(space, LocalSpace)
    la = space.nodes["a"].log
    assert la is not None
    channel = raw_channel(
        space, "a", pem(space, "b", "tls_key"), pem(space, "b", "tls_cert"), own_token(space, "b")
    )
    with channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        got = stub.GetEntries(audit_pb2.GetEntriesRequest(start=0, end=la.size), timeout=5)
        assert got.entries and all(b'"b"' in e.body for e in got.entries)
        hidden = next(i for i, body in la.entries(0, la.size) if b'"parties":["a","c"]' in body)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(index=hidden, tree_size=la.size), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as info:
            stub.GetEntries(audit_pb2.GetEntriesRequest(start=0, end=5000), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_reconcile_pairs_stream_windows(world: dict[str, object], tmp_path: Path) -> None:
    """A window receipt missing from one log, or altered in it, is listed."""
    root = world["root"]
    assert isinstance(root, Path)
    b = export(world, "exp-b", tmp_path)
    lines = (b / "entries.jsonl").read_bytes().splitlines(keepends=True)

    def is_window(line: bytes, index: int) -> bool:
        entry = json.loads(line)
        return bool(
            entry["kind"] == "stream.window"
            and parse_window(entry["data"]["receipt"]).window.index == index
        )

    (b / "entries.jsonl").write_bytes(b"".join(ln for ln in lines if not is_window(ln, 1)))
    result = reconcile(root / "exp-a", b)
    assert not result["ok"] and result["only_in_a"] == [["ag-2", "window:1"]]
    assert result["windows"] == 1

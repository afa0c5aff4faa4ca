"""Benchmark the transparency log: durable appends, inclusion proofs, offline verify.

    python bench/audit.py [--entries 1000000] [--json]

Figures come with a baseline measured in the same run (this machine is noisy):
* appends: 8 concurrent writers with group commit vs one writer, one transaction per entry;
* proofs: inclusion proof of a random index in the full log vs one primary-key read;
* verify: ``tds audit verify`` of the export vs merely reading and hashing its entries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector._proto.tds.v1 import audit_pb2
from connector.audit.export import fetch_log
from connector.audit.log import TransparencyLog
from connector.audit.note import vkey
from connector.audit.verify import verify
from connector.clock import SystemClock
from connector.store.database import open_database

KEY = ed25519.Ed25519PrivateKey.generate()
DATA = {
    "agreement": "ag-0001",
    "product": "traffic-flow",
    "decision": "allow",
    "input_sha256": "ab" * 32,
}


def new_log(path: Path, **kw: Any) -> TransparencyLog:
    db = open_database(f"sqlite:///{path}")
    return TransparencyLog(
        db, origin="tds/bench/a", actor="a", signing_key=KEY, clock=SystemClock(), **kw
    )


def bench_appends(work: Path, seconds: float) -> dict[str, float]:
    single = new_log(work / "single.db", max_batch=1, gather_seconds=0)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        single.record("bench", parties=["b"], data={**DATA, "n": n})
        n += 1
    single_rate = n / (time.perf_counter() - start)
    single.close()

    group = new_log(work / "group.db")
    counts = [0] * 8
    stop = threading.Event()

    def writer(w: int) -> None:
        while not stop.is_set():
            group.record("bench", parties=["b"], data={**DATA, "w": w, "n": counts[w]})
            counts[w] += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    group_rate = sum(counts) / (time.perf_counter() - start)
    group.close()
    return {
        "single_txn_entries_per_s": round(single_rate),
        "group_commit_8_writers_entries_per_s": round(group_rate),
        "ratio": round(group_rate / single_rate, 2),
    }


def build(work: Path, entries: int, progress: bool) -> TransparencyLog:
    lg = new_log(work / "big.db")
    batch = 2000
    start = time.perf_counter()
    for base in range(0, entries, batch):
        lg.append_many(
            [
                lg.entry("bench", parties=["b"], data={**DATA, "n": base + i})
                for i in range(min(batch, entries - base))
            ]
        )
        if progress and base % 100_000 == 0:
            print(
                f"  built {base:,} entries ({time.perf_counter() - start:.0f} s)", file=sys.stderr
            )
        if base % 250_000 == 0:
            lg.checkpoint()
    lg.checkpoint()
    return lg


def bench_proofs(lg: TransparencyLog, samples: int = 300) -> dict[str, float]:
    size = lg.size
    rng = random.Random(1)
    proof_ms, read_ms = [], []
    with lg._db.engine.connect() as conn:
        for _ in range(samples):
            i = rng.randrange(size)
            t = time.perf_counter()
            conn.execute(text("SELECT body FROM log_entry WHERE idx = :i"), {"i": i}).one()
            read_ms.append((time.perf_counter() - t) * 1000)
    for _ in range(samples):
        i = rng.randrange(size)
        t = time.perf_counter()
        lg.inclusion_proof(i, size)
        proof_ms.append((time.perf_counter() - t) * 1000)
    p50 = statistics.median(proof_ms)
    return {
        "tree_size": size,
        "proof_p50_ms": round(p50, 3),
        "proof_p99_ms": round(sorted(proof_ms)[int(samples * 0.99)], 3),
        "proof_max_ms": round(max(proof_ms), 3),
        "pk_read_p50_ms": round(statistics.median(read_ms), 3),
        "ratio_to_pk_read": round(p50 / statistics.median(read_ms), 1),
    }


class LocalStub:
    """The AuditService calls ``fetch_log`` makes, answered by the log directly."""

    def __init__(self, lg: TransparencyLog) -> None:
        self.lg = lg

    def GetCheckpoint(self, request: Any, timeout: float) -> Any:
        return audit_pb2.GetCheckpointResponse(
            checkpoint=self.lg.checkpoint().note, vkey=vkey(self.lg.verifier)
        )

    def GetEntries(self, request: Any, timeout: float) -> Any:
        rows = self.lg.entries(request.start, request.end)
        return audit_pb2.GetEntriesResponse(
            entries=[audit_pb2.LogEntry(index=i, body=b) for i, b in rows]
        )

    def ListCheckpoints(self, request: Any, timeout: float) -> Any:
        return audit_pb2.ListCheckpointsResponse(
            checkpoints=[c.note for c in self.lg.checkpoints()]
        )


def bench_verify(lg: TransparencyLog, out: Path) -> dict[str, float]:
    directory = {"a": {"role": "enterprise", "signing_public_key": lg.verifier.public_key.hex()}}
    t = time.perf_counter()
    fetch_log(
        LocalStub(lg),
        out,
        participant="a",
        space="bench",  # type: ignore[arg-type]
        fetched_by="bench",
        directory=directory,
    )
    export_s = time.perf_counter() - t
    t = time.perf_counter()
    with (out / "entries.jsonl").open("rb") as fh:
        for line in fh:
            hashlib.sha256(b"\x00" + line.rstrip(b"\n")).digest()
    hash_s = time.perf_counter() - t
    t = time.perf_counter()
    report = verify(out)
    verify_s = time.perf_counter() - t
    if not report.ok:
        raise SystemExit(f"verify failed: {report.problems[:3]}")
    return {
        "entries": report.size,
        "export_s": round(export_s, 1),
        "verify_s": round(verify_s, 1),
        "read_and_hash_only_s": round(hash_s, 1),
        "ratio_to_read_and_hash": round(verify_s / hash_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--append-seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tds-bench-audit-"))
    try:
        result: dict[str, Any] = {"appends": bench_appends(work, args.append_seconds)}
        lg = build(work, args.entries, progress=not args.json)
        result["inclusion_proofs"] = bench_proofs(lg)
        result["verify"] = bench_verify(lg, work / "export")
        lg.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    targets = {
        "appends_at_least_5000_per_s": result["appends"]["group_commit_8_writers_entries_per_s"]
        >= 5000,
        "proof_under_5_ms": result["inclusion_proofs"]["proof_max_ms"] < 5,
        "verify_under_60_s": result["verify"]["verify_s"] < 60,
    }
    result["targets_met"] = targets
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for section, figures in result.items():
            print(section)
            for k, v in figures.items():
                print(f"  {k:<40} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

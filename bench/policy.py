"""Benchmark the embedded policy engine on the full usage policy.

    python bench/policy.py [--seconds 5] [--json]

Reported beside a baseline measured in the same run: the same engine *rebuilding* the
policy set for every call, so the ratio shows what preparing once buys; and one thread
against two, to show that decisions scale across threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.policy import EmbeddedEngine, load_library
from tests.policy.cases import CASES

# The heaviest usage case: important data, field policy, obligations, limits all apply.
USAGE = next(c for c in CASES if c.name == "usage important data in permitted fields, masked")


def timed_calls(decide: Any, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        decision = decide(USAGE.input)
        latencies.append(time.perf_counter() - t)
        if not decision.allow:
            raise SystemExit(f"unexpected deny: {decision.deny} {decision.detail}")
    return len(latencies), latencies


def threaded(engine: EmbeddedEngine, threads: int, seconds: float) -> float:
    counts = [0] * threads
    stop = threading.Event()

    def worker(i: int) -> None:
        engine.decide(USAGE.input)  # compile this thread's interpreter before timing
        barrier.wait()
        while not stop.is_set():
            engine.decide(USAGE.input)
            counts[i] += 1

    barrier = threading.Barrier(threads + 1)
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    policy = load_library()
    engine = EmbeddedEngine(policy)
    engine.decide(USAGE.input)  # prepare
    n, lat = timed_calls(engine.decide, args.seconds)
    prepared = {
        "decisions_per_s": round(n / sum(lat)),
        "p50_ms": round(statistics.median(lat) * 1000, 3),
        "p99_ms": round(sorted(lat)[int(len(lat) * 0.99)] * 1000, 3),
    }

    def rebuild(document: Any) -> Any:
        return EmbeddedEngine(policy).decide(document)  # a new interpreter: compile per call

    n2, lat2 = timed_calls(rebuild, min(args.seconds, 3.0))
    baseline = {
        "decisions_per_s": round(n2 / sum(lat2), 1),
        "p50_ms": round(statistics.median(lat2) * 1000, 3),
    }
    one = threaded(engine, 1, args.seconds)
    two = threaded(engine, 2, args.seconds)
    result = {
        "prepared": prepared,
        "rebuild_per_call": baseline,
        "speedup_from_preparing": round(
            prepared["decisions_per_s"] / baseline["decisions_per_s"], 1
        ),
        "threads": {
            "one_per_s": round(one),
            "two_per_s": round(two),
            "scaling": round(two / one, 2),
        },
        "targets_met": {
            "p50_at_most_1_ms": prepared["p50_ms"] <= 1.0,
            "at_least_1500_per_s": prepared["decisions_per_s"] >= 1500,
            "two_threads_scale": two > one,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fuzz every RPC of a running connector for longer than the test suite does.

The same structure-aware requests as tests/fuzz (tests/support/fuzzing.py), sent as a
member, as the server's admin and with no token, against a registry (SQLite) and a
connector on loopback (SQLite, or PostgreSQL with --database-url). Counts answers per
method and code; any INTERNAL/UNKNOWN, traceback, error log line, state change on refusal
or lost health is a failure (exit 1), printed with the request that caused it.

    python -m bench.fuzz --examples 5000 [--database-url postgresql://…] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fuzzing import bodies_for, fuzz_target, state_of

BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="calls to make in all")
    parser.add_argument("--database-url", default="", help="connector database (default SQLite)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    counts: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, fuzz_target(Path(tmp), args.database_url) as ts:
        served = [(t, rpc) for t in ts.values() for rpc in t.rpcs]
        rpcs = [rpc for _, rpc in served]

        @st.composite
        def calls(draw: st.DrawFn) -> tuple[str, int, bytes]:
            index = draw(st.integers(0, len(rpcs) - 1))
            who = draw(st.sampled_from(["member", "admin", "anonymous"]))
            return who, index, draw(bodies_for(rpcs[index]))

        @settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(call=calls())
        def run(call: tuple[str, int, bytes]) -> None:
            who, index, body = call
            t, rpc = served[index]
            before = state_of(t.node)
            code, details = t.call(who, rpc, body)
            counts[(rpc.path, code.name)] += 1
            problem = ""
            if code in BAD or "Traceback" in details:
                problem = f"{code.name} {details!r}"
            elif code != grpc.StatusCode.OK and state_of(t.node) != before:
                problem = f"refused {code.name} but the database changed"
            elif t.findings.records:
                problem = f"logged {t.findings.records[:3]}"
                t.findings.records.clear()
            elif not t.serving():
                problem = "health no longer SERVING"
            if problem:
                failures.append(f"{rpc.path} as {who} with {body[:60]!r}: {problem}")

        run()
        stop_seconds = 0.0
        for t in ts.values():
            stop_started = time.monotonic()
            t.node.stop(grace=2.0)
            stop_seconds = max(stop_seconds, time.monotonic() - stop_started)
    if stop_seconds > 5.0:
        failures.append(f"stop took {stop_seconds:.1f} s (grace 2 s + 3 s margin)")
    report = {
        "calls": sum(counts.values()),
        "methods": len({path for path, _ in counts}),
        "seconds": round(time.monotonic() - started, 1),
        "stop_seconds": round(stop_seconds, 2),
        "codes": dict(Counter(code for _, code in counts.elements())),
        "per_method": {f"{p} {c}": n for (p, c), n in sorted(counts.items())},
        "failures": failures,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['calls']} calls to {report['methods']} methods in {report['seconds']} s")
        for code, n in sorted(report["codes"].items()):
            print(f"  {code:<20} {n}")
        print(f"stopped in {report['stop_seconds']} s")
        for failure in failures:
            print(f"FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark one compute-to-data answer against DuckDB running the same query directly.

    python bench/compute.py [--rows 1000000] [--rounds 30] [--json]

A table of admissions (district, age_band, year, cost, days) with ``--rows`` rows is
written as CSV and loaded twice: into the engine's locked-down DuckDB (``DuckDBTable``)
and into a plain DuckDB connection with the same memory and thread limits. Each round
answers ::

    SELECT district, age_band, count(*), avg(cost) FROM product
    WHERE year = 2026 GROUP BY district, age_band

through tds (parse and validate with sqlglot, the engine's own clamped SQL, OpenDP noise
and noisy threshold, canonical JSON answer and its SHA-256, the receipt's fields) and
directly (the raw text, fetchall), in turn. Reported: p50 of each, their ratio (target
<= 1.5) and the absolute overhead. The same for the offer without differential privacy
(k only), whose differencing (isolation) check is one more statement, a scan of the
whole table (``connector.compute.engine.isolating_cells``).

"Directly" is measured on two tables, both reported:

- ``duckdb_direct``: the table DuckDB's ``read_csv`` makes (text columns VARCHAR), as
  someone running DuckDB on the file would have it; the ratio ``ratio_p50`` is against it;
- ``duckdb_same_table``: the same table stored as tds's embedded engine stores it (text
  columns of few values as ENUMs, ``encode_categories``), so ``ratio_same_table_p50`` is
  the cost of tds's path alone, storage aside.

Usage decision, ε metering, signed receipts and logs are not in this figure (the engine
path only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.compute import answer_query, parse_rules
from connector.compute.embedded import DuckDBTable, EmbeddedLimits, encode_categories

QUERY = (
    "SELECT district, age_band, count(*), avg(cost) FROM product"
    " WHERE year = 2026 GROUP BY district, age_band"
)
RULES: dict[str, Any] = {
    "k": 10,
    "max_groups": 1000,
    "dimensions": {
        "district": {"type": "text"},
        "age_band": {"type": "text"},
        "year": {"type": "integer"},
    },
    "measures": {"cost": {"aggregates": ["count", "sum", "avg"], "lower": 0, "upper": 50000}},
}
PRIVACY = {"epsilon_per_query": 0.5, "epsilon_budget": 10.0, "delta": 1e-7}
LIMITS = EmbeddedLimits(memory_mb=512, threads=2)


def _write(path: Path, rows: int) -> None:
    con = duckdb.connect()
    con.execute(
        f"""COPY (
            SELECT 'p-' || i AS patient_id,
                   'district-' || (i % 16) AS district,
                   ['0-17', '18-64', '65+'][1 + (i // 16) % 3] AS age_band,
                   2020 + (i % 7) AS year,
                   round(100 + (i * 7919) % 20000, 2) AS cost,
                   i % 30 AS days
            FROM range({rows}) t(i)
        ) TO '{path}' (HEADER, DELIMITER ',')"""
    )
    con.close()


def _p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "admissions.csv"
        _write(path, args.rows)
        t0 = time.perf_counter()
        table = DuckDBTable(path, "csv", LIMITS)
        load_s = time.perf_counter() - t0
        config: dict[str, Any] = {
            "memory_limit": f"{LIMITS.memory_mb}MB",
            "threads": LIMITS.threads,
        }
        direct = duckdb.connect(":memory:", config=config)
        same = duckdb.connect(":memory:", config=config)
        for con in (direct, same):
            con.execute(f"CREATE TABLE product AS SELECT * FROM read_csv('{path}', header = true)")
        encode_categories(same)
        results: dict[str, Any] = {
            "rows": args.rows,
            "rounds": args.rounds,
            "load_s": round(load_s, 3),
            "path": "engine (parse, isolation check, answer, disclosure, receipt fields)",
        }
        for name, spec in (("dp", RULES | {"privacy": PRIVACY}), ("k_only", RULES)):
            rules = parse_rules(spec)
            times: dict[str, list[float]] = {"tds": [], "direct": [], "same": []}
            for i in range(args.rounds + 3):  # 3 untimed warm-up rounds
                t = time.perf_counter()
                answer = answer_query(QUERY, rules, table)
                answer.receipt("sha256:bench")
                t_tds = time.perf_counter() - t
                t = time.perf_counter()
                direct.execute(QUERY).fetchall()
                t_direct = time.perf_counter() - t
                t = time.perf_counter()
                same.execute(QUERY).fetchall()
                t_same = time.perf_counter() - t
                if i >= 3:
                    times["tds"].append(t_tds)
                    times["direct"].append(t_direct)
                    times["same"].append(t_same)
            tds, dd, st = (_p50_ms(times[k]) for k in ("tds", "direct", "same"))
            results[name] = {
                "tds_p50_ms": round(tds, 2),
                "duckdb_direct_p50_ms": round(dd, 2),
                "duckdb_same_table_p50_ms": round(st, 2),
                "ratio_p50": round(tds / dd, 3),
                "ratio_same_table_p50": round(tds / st, 3),
                "overhead_p50_ms": round(tds - dd, 2),
                "overhead_same_table_p50_ms": round(tds - st, 2),
                "groups": len(answer.disclosed.rows),
                "suppressed": answer.disclosed.suppressed,
            }
        table.close()
        direct.close()
        same.close()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{args.rows} rows, {args.rounds} rounds (load {results['load_s']} s)")
        for name in ("dp", "k_only"):
            r = results[name]
            print(
                f"{name:7s} tds p50 {r['tds_p50_ms']:.2f} ms; DuckDB direct p50"
                f" {r['duckdb_direct_p50_ms']:.2f} ms, ratio {r['ratio_p50']:.2f}"
                f" (target <= 1.5), overhead {r['overhead_p50_ms']:.2f} ms; on tds's table"
                f" {r['duckdb_same_table_p50_ms']:.2f} ms, ratio"
                f" {r['ratio_same_table_p50']:.2f}, overhead"
                f" {r['overhead_same_table_p50_ms']:.2f} ms"
            )


if __name__ == "__main__":
    main()

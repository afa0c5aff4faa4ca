"""Benchmark one compute-to-data answer against DuckDB running the same query directly.

    python bench/compute.py [--rows 1000000] [--rounds 30] [--json] [--no-connector]

A table of admissions (district, age_band, year, cost, days) with ``--rows`` rows is
written as CSV and loaded twice: into the engine's locked-down DuckDB (``DuckDBTable``)
and into a plain DuckDB connection with the same memory and thread limits. Each round
answers ::

    SELECT district, age_band, count(*), avg(cost) FROM product
    WHERE year = 2026 GROUP BY district, age_band

through tds (parse and validate with sqlglot, the engine's own clamped SQL, OpenDP noise
and noisy threshold, canonical JSON answer and its SHA-256, the receipt's fields) and
through the plain connection (the raw text, fetchall), alternating. Reported: p50 of each,
their ratio (target <= 1.5) and the absolute overhead. The same for the offer without
differential privacy (k only), whose isolation check costs one counting query per filter.

``connector`` is the whole path between two running connectors: the consumer's admin asks
its connector (``ComputeService.Ask``), which calls the provider (mutual TLS, membership
token): stored agreement verified, question checked, the usage policy's ``compute.run``
decision (logged), ε reserved in the metering row, the engine and disclosure control, the
receipt signed and logged; the consumer checks it, countersigns and logs it, and confirms
it to the provider, which logs it too. Its baseline is the same plain DuckDB query in the
same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc, compute_pb2, compute_pb2_grpc
from connector.compute import answer_query, parse_rules
from connector.compute.embedded import DuckDBTable, EmbeddedLimits
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node.clients import admin_channel

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


def _through_connectors(
    path: Path, rounds: int, plain: duckdb.DuckDBPyConnection, root: Path
) -> dict[str, Any]:
    """p50 of ``Ask`` between two running connectors against plain DuckDB, alternating."""
    budget = {"epsilon_per_query": 0.5, "epsilon_budget": 1000.0, "delta": 1e-7}
    with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("lab", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        data_dir = sp.start_connector("gov").cfg.data_dir
        sp.start_connector("lab")
        # The provider reads sources only under its data directory: a hard link puts the
        # table there without copying it.
        os.link(path, data_dir / "admissions.csv")
        description = {
            "id": "admissions",
            "title": "admissions",
            "grade": "general",
            "fields": ["patient_id", "district", "age_band", "year", "cost", "days"],
            "source": {"kind": "table", "format": "csv", "path": "admissions.csv"},
            "offers": [
                {
                    "id": "o1",
                    "purposes": ["research"],
                    "valid_from_ns": 0,
                    "valid_until_ns": 4_000_000_000_000_000_000,
                    "delivery": ["compute"],
                    "compute": RULES | {"privacy": budget},
                }
            ],
        }
        gov = admin_pb2.AddProductRequest(description=json.dumps(description), format="json")
        admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["gov"])).AddProduct(
            gov, timeout=30
        )
        lab = admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["lab"]))
        info = lab.StartNegotiation(
            admin_pb2.StartNegotiationRequest(
                provider="gov",
                product_id="admissions",
                offer_id="o1",
                purpose="research",
                wait_ms=20_000,
            ),
            timeout=30,
        )
        ask = compute_pb2_grpc.ComputeServiceStub(admin_channel(sp.configs["lab"])).Ask
        request = compute_pb2.ComputeRequest(agreement_id=info.agreement_id, question=QUERY)
        tds: list[float] = []
        raw: list[float] = []
        for i in range(rounds + 3):  # 3 untimed warm-up rounds (the first loads the table)
            t = time.perf_counter()
            answer = json.loads(ask(request, timeout=120).answer)
            t_tds = time.perf_counter() - t
            t = time.perf_counter()
            plain.execute(QUERY).fetchall()
            t_raw = time.perf_counter() - t
            if i >= 3:
                tds.append(t_tds)
                raw.append(t_raw)
    return {
        "tds_p50_ms": round(_p50_ms(tds), 2),
        "duckdb_p50_ms": round(_p50_ms(raw), 2),
        "ratio_p50": round(_p50_ms(tds) / _p50_ms(raw), 3),
        "overhead_p50_ms": round(_p50_ms(tds) - _p50_ms(raw), 2),
        "groups": len(answer["rows"]),
    }


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--no-connector", action="store_true", help="skip the run between two connectors"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "admissions.csv"
        _write(path, args.rows)
        t0 = time.perf_counter()
        table = DuckDBTable(path, "csv", LIMITS)
        load_s = time.perf_counter() - t0
        plain = duckdb.connect(
            ":memory:",
            config={"memory_limit": f"{LIMITS.memory_mb}MB", "threads": LIMITS.threads},
        )
        plain.execute(f"CREATE TABLE product AS SELECT * FROM read_csv('{path}', header = true)")
        results: dict[str, Any] = {
            "rows": args.rows,
            "rounds": args.rounds,
            "load_s": round(load_s, 3),
        }
        for name, spec in (("dp", RULES | {"privacy": PRIVACY}), ("k_only", RULES)):
            rules = parse_rules(spec)
            tds: list[float] = []
            raw: list[float] = []
            for i in range(args.rounds + 3):  # 3 untimed warm-up rounds
                t = time.perf_counter()
                answer = answer_query(QUERY, rules, table)
                answer.receipt("sha256:bench")
                t_tds = time.perf_counter() - t
                t = time.perf_counter()
                plain.execute(QUERY).fetchall()
                t_raw = time.perf_counter() - t
                if i >= 3:
                    tds.append(t_tds)
                    raw.append(t_raw)
            results[name] = {
                "tds_p50_ms": round(_p50_ms(tds), 2),
                "duckdb_p50_ms": round(_p50_ms(raw), 2),
                "ratio_p50": round(_p50_ms(tds) / _p50_ms(raw), 3),
                "overhead_p50_ms": round(_p50_ms(tds) - _p50_ms(raw), 2),
                "groups": len(answer.disclosed.rows),
                "suppressed": answer.disclosed.suppressed,
            }
        table.close()
        if not args.no_connector:
            results["connector"] = _through_connectors(
                path, args.rounds, plain, Path(tmp) / "space"
            )
        plain.close()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{args.rows} rows, {args.rounds} rounds (load {results['load_s']} s)")
        for name in ("dp", "k_only", "connector"):
            if name not in results:
                continue
            r = results[name]
            print(
                f"{name:7s} tds p50 {r['tds_p50_ms']:.2f} ms, DuckDB direct p50"
                f" {r['duckdb_p50_ms']:.2f} ms, ratio {r['ratio_p50']:.2f}"
                f" (target <= 1.5), overhead {r['overhead_p50_ms']:.2f} ms"
            )


if __name__ == "__main__":
    main()

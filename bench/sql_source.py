"""A 1,000,000-row PostgreSQL table delivered masked through an SQL source, against COPY.

    python bench/sql_source.py [--rows 1000000] [--url URL] [--json]

(``--url`` defaults to ``postgresql://postgres@127.0.0.1:5432/test``.)

Creates a table of orders with ``generate_series`` (dropped afterwards), then in the same
run:

- **tds**: ``connector.sources.delivered.materialise`` of the SQL source
  ``SELECT id, customer, email, city, amount, ordered_on FROM …`` as a transfer does it:
  checked query, read-only transaction, server-side cursor, the customer fields masked
  (``customer`` hashed per agreement, ``email`` truncated), the rows hashed for the
  source's state, CSV written and fsynced to a staging file with its SHA-256;
- **baseline**: ``COPY (the same query) TO STDOUT WITH (FORMAT csv, HEADER)`` through
  psycopg, every block read (and thrown away) by this process.

- **tds unmasked**: the same without masks, to show what the masks cost;
- **tds read only**: the snapshot read and its state hashed, nothing projected or written,
  to show what reading costs.

Each is run ``--repeat`` times in turn and the median kept. Reports MB/s of each (delivered
bytes over wall time), their ratio (target at least 0.5), where tds's time goes (reading
and the state hash; projecting, encoding, hashing and writing the CSV; the masks) and this
process's peak resident memory (target under 200 MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.sources.delivered import materialise
from connector.sources.sql import SqlConnection, SqlSources

MASKS = {"customer": {"method": "hash"}, "email": {"method": "truncate", "keep": 3}}
FIELDS = ["id", "customer", "email", "city", "amount", "ordered_on"]


def _create(url: str, table: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, customer TEXT, email TEXT, "
            "city TEXT, amount NUMERIC(10, 2), ordered_on DATE)"
        )
        db.execute(
            f"INSERT INTO {table} SELECT i, 'customer ' || i, 'c' || i || '@example.com', "
            "(ARRAY['Haidian','Chaoyang','Xicheng','Dongcheng','Fengtai'])[1 + i % 5], "
            "(i % 100000) / 100.0, DATE '2026-01-01' + (i % 365) "
            f"FROM generate_series(1, {rows}) i"
        )
        db.execute(f"ANALYZE {table}")


def _copy(url: str, query: str) -> tuple[int, float]:
    start = time.perf_counter()
    size = 0
    with (
        psycopg.connect(url) as db,
        db.cursor() as cur,
        cur.copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy,
    ):
        for block in copy:
            size += len(block)
    return size, time.perf_counter() - start


def _tds(url: str, query: str, out: Path, masks: dict[str, Any]) -> tuple[int, float, int]:
    sources = SqlSources({"orders": SqlConnection("orders", url)})
    try:
        start = time.perf_counter()
        source = sources.source("orders", query, FIELDS)
        made = materialise(
            source, out, fmt="csv", permitted=None, masks=masks, key=bytes(range(32))
        )
        elapsed = time.perf_counter() - start
    finally:
        sources.close()
    return made.delivered.size, elapsed, made.rows


def _read(url: str, query: str) -> float:
    sources = SqlSources({"orders": SqlConnection("orders", url)})
    try:
        start = time.perf_counter()
        with sources.source("orders", query, FIELDS).open_snapshot() as snapshot:
            for _row in snapshot:
                pass
            snapshot.state()
        return time.perf_counter() - start
    finally:
        sources.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = f"tds_bench_{uuid.uuid4().hex[:8]}"
    query = f"SELECT id, customer, email, city, amount, ordered_on FROM {table}"
    _create(args.url, table, args.rows)
    runs: dict[str, list[float]] = {"copy": [], "tds": [], "plain": [], "read": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _copy(args.url, query)  # warm the table's pages into the server's cache
            for _ in range(args.repeat):
                copy_bytes, copy_s = _copy(args.url, query)
                tds_bytes, tds_s, rows = _tds(args.url, query, Path(tmp) / "orders.csv", MASKS)
                plain_bytes, plain_s, _ = _tds(args.url, query, Path(tmp) / "plain.csv", {})
                read_s = _read(args.url, query)
                for key, value in (
                    ("copy", copy_s),
                    ("tds", tds_s),
                    ("plain", plain_s),
                    ("read", read_s),
                ):
                    runs[key].append(value)
    finally:
        with psycopg.connect(args.url, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {table}")
    if rows != args.rows:
        raise SystemExit(f"delivered {rows} rows, not {args.rows}")
    copy_s, tds_s, plain_s, read_s = (
        statistics.median(runs[k]) for k in ("copy", "tds", "plain", "read")
    )
    mb = 1024 * 1024
    copy_rate, tds_rate = copy_bytes / mb / copy_s, tds_bytes / mb / tds_s
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "rows": rows,
        "repeat": args.repeat,
        "copy": {
            "mb": round(copy_bytes / mb, 1),
            "seconds": round(copy_s, 2),
            "mb_per_s": round(copy_rate, 1),
        },
        "tds": {
            "mb": round(tds_bytes / mb, 1),
            "seconds": round(tds_s, 2),
            "mb_per_s": round(tds_rate, 1),
            "rows_per_s": round(rows / tds_s),
        },
        "ratio": round(tds_rate / copy_rate, 2),
        "tds_unmasked": {
            "mb_per_s": round(plain_bytes / mb / plain_s, 1),
            "seconds": round(plain_s, 2),
            "ratio": round(plain_bytes / mb / plain_s / copy_rate, 2),
        },
        "tds_seconds_spent": {
            "reading_and_state_hash": round(read_s, 2),
            "projecting_encoding_writing": round(plain_s - read_s, 2),
            "masks": round(tds_s - plain_s, 2),
        },
        "peak_rss_mb": round(peak_mb, 1),
        "targets_met": {
            "ratio_at_least_0_5": tds_rate / copy_rate >= 0.5,
            "rss_under_200_mb": peak_mb < 200,
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

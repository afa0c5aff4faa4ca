"""A 1,000,000-row PostgreSQL table delivered masked through a transfer, against COPY.

    python bench/sql_source.py [--rows 1000000] [--url URL] [--repeat 3] [--no-transfer]
                               [--served] [--json]

(``--url`` defaults to ``postgresql://postgres@127.0.0.1:5432/test``.)

Creates a table of orders with ``generate_series`` (dropped afterwards), then in the same
run, each ``--repeat`` times in turn (the median kept):

- **transfer** (the issue's figure): a registry, a provider and a consumer connector in
  this process, the provider publishing the SQL source
  ``SELECT id, customer, email, city, amount, ordered_on FROM …`` with the customer fields
  masked (``customer`` hashed per agreement, ``email`` truncated); one agreement, and a
  whole transfer per round as the consumer runs it (``TransferConsumer.run``: the usage
  decision, the provider materialising the delivered form, the pull over mutual TLS, the
  consumer's hashing and storing, the dual-signed receipt logged on both sides);
- **baseline**: ``COPY (the same query) TO STDOUT WITH (FORMAT csv, HEADER)`` through
  psycopg, every block read (and thrown away) by this process;
- **materialise**: ``connector.sources.delivered.materialise`` alone, as the provider
  does it at the start of a transfer: checked query, read-only transaction, server-side
  cursor, masks, the rows hashed for the source's state, CSV written and fsynced to a
  staging file with its SHA-256;
- **materialise unmasked**: the same without masks, to show what the masks cost;
- **read only**: the snapshot read and its state hashed, nothing projected or written,
  to show what reading costs;
- **floor**: the least a connector that delivers these rows masked must do in this
  process, whatever else it skips: fetch every row through the same server-side cursor
  (psycopg's C loaders, the source's text loaders for DECIMAL and DATE, the same batch
  size) and compute the hashed column's keyed
  HMAC-SHA256 per distinct value (``Masker.column``, cryptography/OpenSSL). No state
  hash, no projection, no encoding, no file. Its ratio (the delivered bytes over the
  floor's time, against ``COPY``'s MB/s) is the best ratio any implementation of the
  delivery could reach on this machine with these libraries in one process
  (``best_possible_ratio_overlapped``: the same with the floor's CPU time as its wall
  time, as if the database's work were wholly hidden behind it); the state hash, the
  encoding and the file's SHA-256 a delivery needs come on top;
- **database masks** (when the server offers pgcrypto): the other way to place the work,
  the database computing the masks itself, ``COPY`` of the query with ``customer`` as
  pgcrypto's ``hmac(…, 'sha256')`` in hex under the same key and ``email`` as
  ``left(email, 3)``: the same bytes tds delivers (checked by SHA-256), read by this
  process. It shows what the delivered form costs the database alone, before any
  connector work (pgcrypto goes in a schema of its own, dropped afterwards).

Reports MB/s of each (delivered bytes over wall time), the ratios to COPY (target: the
transfer's at least 0.5), where the time goes (reading and the state hash; projecting,
encoding, hashing and writing the CSV; the masks; what the transfer adds to
materialising) and this process's peak resident memory (target: every process under
200 MB; this one holds the registry and both connectors as well, which ``tds serve`` runs
as processes of their own). ``--no-transfer`` leaves the connectors out.

``--served`` adds one transfer as a user runs it, each party its own process (``tds
serve`` for the operator, the provider and the consumer; ``tds product add``, ``tds
negotiate``, ``tds transfer``), with ``COPY`` read just before and after it: its ratio,
and every process's peak resident memory (``VmHWM``), which is what the 200 MB target
names.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.string import TextLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.sources.delivered import materialise
from connector.sources.sql import SqlConnection, SqlSources
from connector.transfer.masking import Masker

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


def _tds(url: str, query: str, out: Path, masks: dict[str, Any]) -> tuple[int, float, int, float]:
    """Bytes, wall time, rows and this process's CPU time of one materialising."""
    sources = SqlSources({"orders": SqlConnection("orders", url)})
    try:
        cpu = time.process_time()
        start = time.perf_counter()
        source = sources.source("orders", query, FIELDS)
        made = materialise(
            source, out, fmt="csv", permitted=None, masks=masks, key=bytes(range(32))
        )
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    finally:
        sources.close()
    return made.delivered.size, elapsed, made.rows, cpu


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


def _floor(url: str, query: str) -> tuple[float, float]:
    """Wall and CPU time of the floor (see the module docstring): the rows fetched, the
    hashed column's HMACs computed, nothing else."""
    masker = Masker(MASKS, bytes(range(32)))
    hashed = FIELDS.index("customer")
    with psycopg.connect(url) as db:
        # The source's own loaders: DECIMAL and DATE handed over as the database's text,
        # the cheapest read of them (no Decimal or date objects built).
        for name in ("numeric", "date"):
            db.adapters.register_loader(name, TextLoader)
        cpu = time.process_time()
        start = time.perf_counter()
        with db.cursor(name="tds_floor") as cursor:
            cursor.execute(query)
            while batch := cursor.fetchmany(SqlConnection("floor", url).fetch_rows):
                masker.column("customer", [row[hashed] for row in batch])
        return time.perf_counter() - start, time.process_time() - cpu


def _pgcrypto_schema(url: str, table: str) -> tuple[str, bool] | None:
    """The schema holding pgcrypto and whether this run made it (and drops it), or
    ``None`` when the server cannot give it."""
    schema = f"{table}_pgcrypto"
    try:
        with psycopg.connect(url, autocommit=True) as db:
            installed = db.execute(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'pgcrypto'"
            ).fetchone()
            if installed is not None:
                return str(installed[0]), False
            found = db.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto'"
            ).fetchone()
            if found is None:
                return None
            with db.transaction():  # both or neither
                db.execute(f"CREATE SCHEMA {schema}")
                db.execute(f"CREATE EXTENSION pgcrypto SCHEMA {schema}")
    except psycopg.Error as exc:
        print(f"database masks left out: {exc}".strip(), file=sys.stderr)
        return None
    return schema, True


def _database_masks(url: str, table: str, schema: str) -> tuple[int, float, str]:
    """Bytes, wall time and SHA-256 of ``COPY`` of the masked form computed by the
    database (see the module docstring)."""
    query = (
        f"SELECT id, encode({schema}.hmac(convert_to(customer, 'UTF8'), %s::bytea, "
        "'sha256'), 'hex') AS customer, left(email, 3) AS email, city, amount, ordered_on "
        f"FROM {table}"
    )
    digest = hashlib.sha256()
    size = 0
    start = time.perf_counter()
    with (
        psycopg.connect(url) as db,
        db.cursor() as cur,
        cur.copy(
            f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)", (bytes(range(32)),)
        ) as copy,
    ):
        for block in copy:
            size += len(block)
            digest.update(block)
    return size, time.perf_counter() - start, digest.hexdigest()


@contextmanager
def _transfers(url: str, query: str, root: Path) -> Iterator[Callable[[], tuple[int, float]]]:
    """Connectors in this process, the SQL product published with the masks and agreed;
    a function running one whole transfer: its bytes and wall time."""
    # Imported here: with --no-transfer, the peak RSS is the materialising process's own.
    from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc
    from connector.demo.space import LocalSpace
    from connector.identity.names import Role
    from connector.node.clients import admin_channel

    sources = {"orders": SqlConnection("orders", url, statement_timeout_seconds=600)}
    with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("lab", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        sp.start_connector("gov", sources=sources)
        sp.start_connector("lab")
        description = {
            "id": "orders",
            "title": "orders",
            "grade": "general",
            "fields": FIELDS,
            "source": {"kind": "sql", "connection": "orders", "query": query, "format": "csv"},
            "offers": [
                {
                    "id": "o1",
                    "purposes": ["research"],
                    "valid_from_ns": 0,
                    "valid_until_ns": 4_000_000_000_000_000_000,
                    "masks": MASKS,
                }
            ],
        }
        gov = admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["gov"]))
        lab = admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["lab"]))
        gov.AddProduct(
            admin_pb2.AddProductRequest(description=json.dumps(description), format="json"),
            timeout=60,
        )
        agreement = lab.StartNegotiation(
            admin_pb2.StartNegotiationRequest(
                provider="gov",
                product_id="orders",
                offer_id="o1",
                purpose="research",
                wait_ms=30_000,
            ),
            timeout=60,
        ).agreement_id
        if not agreement:
            raise SystemExit("the negotiation did not reach an agreement")
        receiver = sp.nodes["lab"].receiver
        assert receiver is not None

        def once() -> tuple[int, float]:
            start = time.perf_counter()
            t = receiver.run(agreement)
            elapsed = time.perf_counter() - start
            if t.state != "completed":
                raise SystemExit(f"the transfer ended {t.state}: {t.reason}")
            Path(t.path).unlink()  # the consumer's copy, 100 MB a round
            return t.size, elapsed

        yield once


_TDS = [sys.executable, "-m", "connector"]


_PEAK = """
import atexit, runpy, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            sys.stderr.write("tds-bench-vmhwm-kb " + line.split()[1] + "\\n")
atexit.register(peak)
sys.argv = ["connector", *sys.argv[1:]]
runpy.run_module("connector", run_name="__main__", alter_sys=True)
"""
"""``python -m connector`` that writes its own peak RSS (``VmHWM``) to stderr at exit.
Not ``getrusage``: a child's ``ru_maxrss`` counts the forking parent's pages too."""


def _cli(*args: str, cwd: Path, timeout: float = 120, peaks: list[float] | None = None) -> str:
    command = [*_TDS, *args] if peaks is None else [sys.executable, "-c", _PEAK, *args]
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"tds {' '.join(args)} failed: {done.stderr.strip()}")
    if peaks is not None:
        marks = [line.split()[1] for line in done.stderr.splitlines() if "vmhwm-kb" in line]
        peaks.append(int(marks[-1]) / 1024)
    return done.stdout


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(root: Path, party: str, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*_TDS, "serve", "--config", f"{party}.toml"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    if "listening" not in proc.stdout.readline():
        raise SystemExit(f"tds serve of {party} did not start")
    return proc


def _served(url: str, query: str, root: Path) -> dict[str, Any]:
    """One transfer between ``tds serve`` processes: wall time, bytes, each process's
    peak RSS, and ``COPY``'s time just before and after it."""
    root.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parties = ("operator", "gov", "lab")
    members = ["--participant", "gov:government", "--participant", "lab:enterprise"]
    _cli("pki", "init", "--space", "city", "--out", "pki", *members, cwd=root)
    ports = {p: _port() for p in parties}
    for p in parties:
        registry = [] if p == "operator" else ["--registry", f"127.0.0.1:{ports['operator']}"]
        listen = ["--listen", f"127.0.0.1:{ports[p]}"]
        _cli(
            "init",
            "--pki",
            "pki",
            "--participant",
            p,
            *listen,
            "--out",
            f"{p}.toml",
            *registry,
            cwd=root,
        )
    with (root / "gov.toml").open("a") as f:
        f.write(f'\n[sources.orders]\nurl = "{url}"\nstatement_timeout_seconds = 600\n')
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        procs["operator"] = _serve(root, "operator", env)
        for p in ("gov", "lab"):
            enrol = ["--participant", p, "--address", f"127.0.0.1:{ports[p]}", "--pki", "pki"]
            _cli("registry", "enrol", "--config", "operator.toml", *enrol, cwd=root)
            procs[p] = _serve(root, p, env)
        for p in ("gov", "lab"):
            deadline = time.monotonic() + 60
            while "revocation_list_issued_at" not in _cli(
                "status", "--config", f"{p}.toml", "--json", cwd=root
            ):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{p} never became ready")
                time.sleep(0.2)
        description = {
            "id": "orders",
            "title": "orders",
            "grade": "general",
            "fields": FIELDS,
            "source": {"kind": "sql", "connection": "orders", "query": query, "format": "csv"},
            "offers": [
                {
                    "id": "o1",
                    "purposes": ["research"],
                    "valid_from_ns": 0,
                    "valid_until_ns": 4_000_000_000_000_000_000,
                    "masks": MASKS,
                }
            ],
        }
        (root / "orders.json").write_text(json.dumps(description))
        _cli("product", "add", "orders.json", "--config", "gov.toml", cwd=root)
        negotiate = ["negotiate", "--config", "lab.toml", "--provider", "gov"]
        negotiate += ["--product", "orders", "--offer", "o1", "--purpose", "research"]
        agreement = json.loads(_cli(*negotiate, "--wait", "--json", cwd=root))["agreement_id"]
        _, before = _copy(url, query)
        transfer = ["transfer", "--agreement", agreement, "--out", "orders.csv"]
        start = time.perf_counter()
        start_wall = time.time()
        cli_peak: list[float] = []
        out = _cli(
            *transfer, "--config", "lab.toml", "--json", cwd=root, timeout=3600, peaks=cli_peak
        )
        seconds = time.perf_counter() - start
        end_wall = start_wall + seconds
        copy_bytes, after = _copy(url, query)
        shown = json.loads(out)
        if shown.get("state") != "completed":
            raise SystemExit(f"the served transfer did not complete: {out}")
        # Where the CLI's wall time goes, by the consumer's own records (same machine's
        # clock): until the consumer starts receiving (the CLI starting and asking, the
        # provider materialising the delivered form), the receiving until the receipt, and
        # the export of the verified bytes to --out (the holding was written around the
        # page cache, so it is read back from the disk) and the CLI's exit.
        phases = {
            "until_receiving": round(shown["started_ms"] / 1000 - start_wall, 2),
            "receiving_to_receipt": round((shown["ended_ms"] - shown["started_ms"]) / 1000, 2),
            "export_to_out_and_exit": round(end_wall - shown["ended_ms"] / 1000, 2),
        }
        size = (root / "orders.csv").stat().st_size
        peaks = {}
        for p, proc in procs.items():
            status = Path(f"/proc/{proc.pid}/status").read_text()
            hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
            peaks[f"tds serve ({p})"] = round(int(hwm.split()[1]) / 1024, 1)
        peaks["tds transfer (the CLI)"] = round(cli_peak[0], 1)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()
    copy_s = (before + after) / 2
    mb = 1024 * 1024
    return {
        "mb": round(size / mb, 1),
        "seconds": round(seconds, 2),
        "seconds_spent": phases,
        "ratio_until_receipt": round(
            (size / (seconds - phases["export_to_out_and_exit"])) / (copy_bytes / copy_s), 2
        ),
        "copy_seconds_before_after": [round(before, 2), round(after, 2)],
        "ratio": round((size / seconds) / (copy_bytes / copy_s), 2),
        "peak_rss_mb": peaks,
        "every_process_under_200_mb": all(v < 200 for v in peaks.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-transfer", action="store_true", help="leave the connectors out (materialise only)"
    )
    parser.add_argument(
        "--served", action="store_true", help="add a transfer between tds serve processes"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = f"tds_bench_{uuid.uuid4().hex[:8]}"
    query = f"SELECT id, customer, email, city, amount, ordered_on FROM {table}"
    _create(args.url, table, args.rows)
    runs: dict[str, list[float]] = {
        k: []
        for k in (
            "copy",
            "transfer",
            "tds",
            "plain",
            "read",
            "tds_cpu",
            "floor",
            "floor_cpu",
            "database_masks",
        )
    }
    pgcrypto = _pgcrypto_schema(args.url, table)
    database_masks: tuple[int, str] | None = None
    transfer_bytes = 0
    served: dict[str, Any] | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
            transfer = (
                None
                if args.no_transfer
                else stack.enter_context(_transfers(args.url, query, Path(tmp) / "space"))
            )
            _copy(args.url, query)  # warm the table's pages into the server's cache
            for _ in range(args.repeat):
                copy_bytes, copy_s = _copy(args.url, query)
                runs["copy"].append(copy_s)
                if transfer is not None:
                    transfer_bytes, transfer_s = transfer()
                    runs["transfer"].append(transfer_s)
                tds_bytes, tds_s, rows, tds_cpu = _tds(
                    args.url, query, Path(tmp) / "orders.csv", MASKS
                )
                plain_bytes, plain_s, _, _ = _tds(args.url, query, Path(tmp) / "plain.csv", {})
                runs["tds"].append(tds_s)
                runs["tds_cpu"].append(tds_cpu)
                runs["plain"].append(plain_s)
                runs["read"].append(_read(args.url, query))
                floor_s, floor_cpu = _floor(args.url, query)
                runs["floor"].append(floor_s)
                runs["floor_cpu"].append(floor_cpu)
                if pgcrypto is not None:
                    masked_bytes, masked_s, masked_sha = _database_masks(
                        args.url, table, pgcrypto[0]
                    )
                    runs["database_masks"].append(masked_s)
                    database_masks = (masked_bytes, masked_sha)
            with (Path(tmp) / "orders.csv").open("rb") as delivered:
                tds_sha256 = hashlib.file_digest(delivered, "sha256").hexdigest()
            if args.served:
                served = _served(args.url, query, Path(tmp) / "served")
    finally:
        with psycopg.connect(args.url, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {table}")
            if pgcrypto is not None and pgcrypto[1]:
                db.execute(f"DROP SCHEMA IF EXISTS {pgcrypto[0]} CASCADE")
    if rows != args.rows:
        raise SystemExit(f"delivered {rows} rows, not {args.rows}")
    if transfer is not None and transfer_bytes != tds_bytes:
        raise SystemExit(f"the transfer delivered {transfer_bytes} bytes, not {tds_bytes}")
    copy_s, tds_s, plain_s, read_s = (
        statistics.median(runs[k]) for k in ("copy", "tds", "plain", "read")
    )
    mb = 1024 * 1024
    copy_rate, tds_rate = copy_bytes / mb / copy_s, tds_bytes / mb / tds_s
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result: dict[str, Any] = {
        "rows": rows,
        "repeat": args.repeat,
        "copy": {
            "mb": round(copy_bytes / mb, 1),
            "seconds": round(copy_s, 2),
            "mb_per_s": round(copy_rate, 1),
        },
    }
    targets: dict[str, bool] = {}
    if transfer is not None:
        transfer_s = statistics.median(runs["transfer"])
        transfer_rate = transfer_bytes / mb / transfer_s
        result["transfer"] = {
            "mb": round(transfer_bytes / mb, 1),
            "seconds": round(transfer_s, 2),
            "mb_per_s": round(transfer_rate, 1),
            "rows_per_s": round(rows / transfer_s),
        }
        result["ratio"] = round(transfer_rate / copy_rate, 2)
        targets["ratio_at_least_0_5"] = transfer_rate / copy_rate >= 0.5
    result["materialise"] = {
        "mb": round(tds_bytes / mb, 1),
        "seconds": round(tds_s, 2),
        "mb_per_s": round(tds_rate, 1),
        "rows_per_s": round(rows / tds_s),
        "ratio": round(tds_rate / copy_rate, 2),
        # The process's CPU time (all its threads: the reading ahead, the sink, and with
        # the connectors in this process their idle work too): steadier than wall time
        # on a loaded machine.
        "cpu_seconds": round(statistics.median(runs["tds_cpu"]), 2),
    }
    result["materialise_unmasked"] = {
        "mb_per_s": round(plain_bytes / mb / plain_s, 1),
        "seconds": round(plain_s, 2),
        "ratio": round(plain_bytes / mb / plain_s / copy_rate, 2),
    }
    spent = {
        "reading_and_state_hash": round(read_s, 2),
        "projecting_encoding_writing": round(plain_s - read_s, 2),
        "masks": round(tds_s - plain_s, 2),
    }
    if transfer is not None:
        spent["transfer_beyond_materialise"] = round(transfer_s - tds_s, 2)
    result["seconds_spent"] = spent
    floor_s = statistics.median(runs["floor"])
    result["floor"] = {
        "what": "rows fetched and the hashed column's HMACs only, in this process",
        "seconds": round(floor_s, 2),
        "cpu_seconds": round(statistics.median(runs["floor_cpu"]), 2),
        # The delivered bytes at the floor's speed: the best ratio any delivery could reach
        # in one process; and were the database's time wholly hidden behind this process's
        # work (its CPU time as the wall time), what that floor alone would leave.
        "best_possible_ratio": round(tds_bytes / mb / floor_s / copy_rate, 2),
        "best_possible_ratio_overlapped": round(
            tds_bytes / mb / statistics.median(runs["floor_cpu"]) / copy_rate, 2
        ),
    }
    if database_masks is not None:
        masked_bytes, masked_sha = database_masks
        masked_s = statistics.median(runs["database_masks"])
        result["database_masks"] = {
            "what": "COPY of the masked form computed by the database (pgcrypto hmac)",
            "seconds": round(masked_s, 2),
            "mb_per_s": round(masked_bytes / mb / masked_s, 1),
            "ratio": round(masked_bytes / mb / masked_s / copy_rate, 2),
            "seconds_over_copy": round(masked_s / copy_s, 2),
            "same_bytes_as_tds": masked_bytes == tds_bytes and masked_sha == tds_sha256,
        }
    result["peak_rss_mb"] = round(peak_mb, 1)
    # The target is per process; here one process holds everything a transfer has.
    result["peak_rss_of"] = (
        "this process: the registry, both connectors and the materialising runs"
        if transfer is not None
        else "this process: the materialising runs"
    )
    targets["rss_under_200_mb"] = peak_mb < 200
    if served is not None:
        result["served"] = served
        targets["served_every_process_under_200_mb"] = served["every_process_under_200_mb"]
    result["targets_met"] = targets
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

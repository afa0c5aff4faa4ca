"""Benchmark one compute-to-data answer against DuckDB running the same query directly.

    python bench/compute.py [--rows 1000000] [--rounds 30] [--json] [--no-connector]
                            [--served]

A table of admissions (district, age_band, year, cost, days) with ``--rows`` rows is
written as CSV. Round ``i`` answers ::

    SELECT district, age_band, count(*), avg(cost) FROM product
    WHERE year = <2020 + i % 7> AND year < <3000 + i> GROUP BY district, age_band

(the second condition is always true; it makes each round's text new, so no cache that
keeps a parsed question for the same text helps: see ``question``)
under two offers: with differential privacy (``dp``: OpenDP noise and noisy threshold)
and with k only (``k_only``: exact counts, groups below k suppressed, and the differencing
check, one more statement that scans the whole table). The tds paths timed:

- ``connector`` (the issue's figure): the whole path between two running connectors: the
  consumer's admin asks its connector (``ComputeService.Ask``), which calls the provider
  (mutual TLS, membership token): stored agreement verified, question checked, the usage
  policy's ``compute.run`` decision (logged), ε reserved in the metering row, the engine
  and disclosure control, the receipt signed and logged (one synced commit); the
  consumer checks it, countersigns and logs it, and answers; its confirmation to the
  provider goes after the answer, untimed, and is waited for (``settle``) before DuckDB
  is timed, so that it does not slow DuckDB's figure down (everything shares one process);
- ``served`` (with ``--served``): the same between connectors started as users start
  them: the registry, ``gov`` and ``a`` each a ``tds serve`` process with its config file
  (``bench/negotiation.py``'s ``space``), the question asked on the consumer's admin API
  exactly as above; DuckDB direct still runs in this process with the same limits, on
  the same table. Each connector's CPU time (every thread, from ``/proc``) while the
  answer was asked for (``cpu_ms_per_answer``, the mean over the timed rounds) and over
  whole rounds (``cpu_ms_per_round``: with the confirmation and background work) replaces
  this process's, and the floor is an admin call into the consumer's process;
- ``engine``: the provider's engine alone (``answer_query`` on a locked-down
  ``DuckDBTable``: parse and check, the differencing check, the engine's own clamped SQL,
  disclosure control, the answer's canonical JSON and SHA-256, the receipt's fields).

The engine answers these questions from its pre-aggregate of the offer's declared
dimensions (``Cube``, docs/compute.md), made once per loaded table and rules, at the first
question: ``engine.load_s`` is the table's load, ``engine.cube_build_ms`` the cube's build
(timed on its own, before the rounds), ``engine.cube_cells`` its size and
``engine.cube_cells_in_python`` whether its cells are also held in Python (questions are
then answered from them without a statement, ``CubeCells``); between
connectors both happen in the first warm-up question, whose time each path reports as
``first_answer_ms`` (untimed otherwise). DuckDB direct has no such pre-aggregate.

Each tds answer is followed, in the same round, by the same query text run directly on
DuckDB (same memory and thread limits, fetchall) on two tables:

- ``duckdb_direct``: the table DuckDB's ``read_csv`` makes (text columns VARCHAR), as
  someone running DuckDB on the file would have it; ``ratio_p50`` is against it;
- ``duckdb_same_table``: the same table stored as tds's embedded engine stores it (text
  columns of few values as ENUMs, ``encode_categories``), so ``ratio_same_table_p50`` is
  the cost of tds's path alone, storage aside.

Reported: p50 of each, the ratios (target <= 1.5: ``ratio_p50``, the p50 of tds over the
p50 of DuckDB direct; ``ratio_paired_p50``, the median of each round's ratio, is steadier
on a shared machine) and the absolute overheads; the CPU time of the process while each
ran (``tds_cpu_p50_ms``, ``duckdb_direct_cpu_p50_ms``, ``cpu_overhead_p50_ms``: all
threads, DuckDB's workers too; steadier than wall time when other work loads the machine);
the load average at the start and the end; and the ``floor`` measured in the same run: a
member call over mutual TLS on an open and on a fresh channel, and one fdatasync where the
provider's database lives.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.negotiation import cpu_seconds, fdatasync_p50_ms, space
from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc, compute_pb2, compute_pb2_grpc
from connector.compute import answer_query, parse_rules
from connector.compute.embedded import DuckDBTable, EmbeddedLimits, encode_categories
from connector.compute.engine import Cube
from connector.compute.store import CONFIRMED
from connector.demo.space import LocalSpace
from connector.node.clients import admin_channel

QUERY = (
    "SELECT district, age_band, count(*), avg(cost) FROM product"
    " WHERE year = {year} AND year < {bound} GROUP BY district, age_band"
)


_ASKED = itertools.count()


def question() -> str:
    """The next question: a year of the seven in turn, and a bound that is always true
    but makes every text of the run new, so no parse cache (each side keeps a question
    asked again with the same text) ever answers: each question is parsed, checked and
    printed as in a varied workload."""
    i = next(_ASKED)
    return QUERY.format(year=2020 + i % 7, bound=3000 + i)


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
# ε per question as an offer would set it; the budget is large so that every round is
# answered.
PRIVACY = {"epsilon_per_query": 0.5, "epsilon_budget": 1000.0, "delta": 1e-7}
OFFERS = {"dp": RULES | {"privacy": PRIVACY}, "k_only": RULES}
LIMITS = EmbeddedLimits(memory_mb=512, threads=2)
WARM_UP = 3


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


class Direct:
    """The same query run directly on DuckDB, on read_csv's table and on tds's."""

    def __init__(self, path: Path) -> None:
        config: dict[str, Any] = {
            "memory_limit": f"{LIMITS.memory_mb}MB",
            "threads": LIMITS.threads,
        }
        self.plain = duckdb.connect(":memory:", config=config)
        self.same = duckdb.connect(":memory:", config=config)
        for con in (self.plain, self.same):
            con.execute(f"CREATE TABLE product AS SELECT * FROM read_csv('{path}', header = true)")
        encode_categories(self.same)

    def close(self) -> None:
        self.plain.close()
        self.same.close()


def _timed(
    tds: Callable[[str], int],
    direct: Direct,
    rounds: int,
    settle: Callable[[], None] = lambda: None,
    *,
    cpu_of: Callable[[], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """``tds`` (asked a new question, returning the groups shown) and both direct queries
    of the same text in turn, each round;
    ``settle`` (untimed) lets what ``tds`` left running finish before DuckDB is timed;
    ``cpu_of`` (the connectors run as processes): CPU seconds used so far by each, read
    after the warm-up and at the end; without it ``tds`` runs in this process, and its CPU
    time is this process's."""
    times: dict[str, list[float]] = {"tds": [], "plain": [], "same": []}
    cpu: dict[str, list[float]] = {"tds": [], "plain": []}
    groups = 0
    first_ms = 0.0
    cpu0: dict[str, float] = {}
    in_call: dict[str, float] = {}
    for i in range(rounds + WARM_UP):
        if i == WARM_UP and cpu_of is not None:
            cpu0 = cpu_of()
        text = question()
        before = cpu_of() if cpu_of is not None and i >= WARM_UP else {}
        c, t = time.process_time(), time.perf_counter()
        groups = tds(text)
        t_tds, c_tds = time.perf_counter() - t, time.process_time() - c
        if i == 0:
            first_ms = t_tds * 1000
        if before:
            for p, used in (cpu_of() if cpu_of is not None else {}).items():
                in_call[p] = in_call.get(p, 0.0) + used - before[p]
        settle()
        c, t = time.process_time(), time.perf_counter()
        direct.plain.execute(text).fetchall()
        t_plain, c_plain = time.perf_counter() - t, time.process_time() - c
        t = time.perf_counter()
        direct.same.execute(text).fetchall()
        t_same = time.perf_counter() - t
        if i >= WARM_UP:
            times["tds"].append(t_tds)
            times["plain"].append(t_plain)
            times["same"].append(t_same)
            cpu["tds"].append(c_tds)
            cpu["plain"].append(c_plain)
    tds_ms, plain_ms, same_ms = (_p50_ms(times[k]) for k in ("tds", "plain", "same"))
    if cpu_of is not None:
        # Every thread of each connector over the timed rounds, confirmations included,
        # per answer (/proc counts clock ticks: too coarse for one answer).
        cpu1 = cpu_of()
        own: dict[str, Any] = {
            # While the answer was asked for (each answer's clock ticks summed over the
            # rounds: a tick falls in a call with the probability of its share of the
            # time, so the mean is right though one answer's figure is not).
            "cpu_ms_per_answer": {p: round(in_call[p] * 1000 / rounds, 2) for p in in_call},
            # And over the whole round: with the confirmation, which follows the answer,
            # and what runs in the background while DuckDB direct is timed.
            "cpu_ms_per_round": {p: round((cpu1[p] - cpu0[p]) * 1000 / rounds, 2) for p in cpu1},
        }
    else:
        own = {
            "tds_cpu_p50_ms": round(_p50_ms(cpu["tds"]), 2),
            "cpu_overhead_p50_ms": round(_p50_ms(cpu["tds"]) - _p50_ms(cpu["plain"]), 2),
        }
    return {
        "tds_p50_ms": round(tds_ms, 2),
        "duckdb_direct_p50_ms": round(plain_ms, 2),
        "duckdb_same_table_p50_ms": round(same_ms, 2),
        "ratio_p50": round(tds_ms / plain_ms, 3),
        "ratio_same_table_p50": round(tds_ms / same_ms, 3),
        "overhead_p50_ms": round(tds_ms - plain_ms, 2),
        "overhead_same_table_p50_ms": round(tds_ms - same_ms, 2),
        # Each round's tds time over the direct time measured right after it: load that
        # comes and goes (the machine is shared) weighs on both of a pair alike.
        "ratio_paired_p50": round(
            statistics.median(t / d for t, d in zip(times["tds"], times["plain"], strict=True)),
            3,
        ),
        # CPU time of the whole process (every thread: both connectors, DuckDB's
        # workers) while each ran: other work on a loaded machine stretches wall time
        # far more than it does this.
        "duckdb_direct_cpu_p50_ms": round(_p50_ms(cpu["plain"]), 2),
        "groups": groups,
        # The first (warm-up) question: between connectors, the provider loads the table
        # and builds its cube in it.
        "first_answer_ms": round(first_ms, 1),
    } | own


def _engine(path: Path, direct: Direct, rounds: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    table = DuckDBTable(path, "csv", LIMITS)
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 3)}
    try:
        # Both offers declare the same dimensions and bounds: one cube serves both.
        cube = Cube.of(parse_rules(RULES))
        t0 = time.perf_counter()
        kept = table.cube(cube)
        out["cube_build_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        assert kept is not None, "no cube was kept"
        assert all(Cube.of(parse_rules(spec)) == cube for spec in OFFERS.values())
        [(cells,)] = table.execute(f"SELECT count(*) FROM {kept.table}")
        out["cube_cells"] = cells
        # Whether its cells are held in Python (questions then run no statement).
        out["cube_cells_in_python"] = kept.cells is not None
        for name, spec in OFFERS.items():
            rules = parse_rules(spec)

            def once(text: str, rules: Any = rules) -> int:
                answer = answer_query(text, rules, table)
                answer.receipt("sha256:bench")
                return len(answer.disclosed.rows)

            out[name] = _timed(once, direct, rounds)
    finally:
        table.close()
    return out


@dataclass
class Connectors:
    """The running pair: one asking call per offer, and what the bench needs besides."""

    calls: dict[str, Callable[[str], int]]
    settle: Callable[[], None]
    """Waits for the consumer's countersignature to reach the provider: it goes after the
    answer, and must not be timed as DuckDB's (it takes CPU from the same two cores, and
    in the in-process layout from the same process)."""
    floor: Callable[[], dict[str, float]]
    pids: dict[str, int]
    """Each connector's process id when it runs as ``tds serve`` (empty in-process)."""


def _floor(sp: LocalSpace, data_dir: Path, rounds: int = 60) -> dict[str, float]:
    """What no answer between two connectors can go below, measured here: a member call
    over mutual TLS with a token (ConfirmComputation of an unknown computation, refused
    after authentication, nothing written) on an open channel and on a fresh one (only
    in-process, where the bench holds the consumer's node; between processes an admin
    call to the consumer instead: the bench's own round trip into a ``tds serve``), and
    one 4 KiB append plus fdatasync where the provider's database lives."""
    out: dict[str, float] = {}
    if "a" in sp.nodes:
        lab = sp.nodes["a"]
        request = compute_pb2.ConfirmComputationRequest(
            computation_id="cp-" + "0" * 32, receipt="{}"
        )

        def call(channel: grpc.Channel) -> None:
            try:
                compute_pb2_grpc.ComputeServiceStub(channel).ConfirmComputation(request, timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc

        kept, fresh = [], []
        channel = lab._kept_member_channel("gov")
        for _ in range(rounds):
            t = time.perf_counter()
            call(channel)
            kept.append(time.perf_counter() - t)
            t = time.perf_counter()
            one = lab._member_channel("gov")
            call(one)
            one.close()
            fresh.append(time.perf_counter() - t)
        out["member_call_open_channel_p50_ms"] = round(_p50_ms(kept), 2)
        out["member_call_fresh_channel_p50_ms"] = round(_p50_ms(fresh), 2)
    else:
        admin = admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["a"]))
        status = []
        for _ in range(rounds):
            t = time.perf_counter()
            admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=10)
            status.append(time.perf_counter() - t)
        out["admin_call_p50_ms"] = round(_p50_ms(status), 2)
    out["fdatasync_4k_p50_ms"] = round(fdatasync_p50_ms(data_dir, rounds), 2)
    return out


@contextmanager
def _connectors(path: Path, root: Path, *, served: bool) -> Iterator[Connectors]:
    """A registry, the provider ``gov`` and the consumer ``a`` running (threads of this
    process, or with ``served`` each its own ``tds serve`` process with its config file,
    as ``bench/negotiation.py`` starts them), a compute-only product per offer and an
    agreement on each; one asking call per offer."""
    pids: dict[str, int] = {}
    with space(root, not served, pids) as sp:
        data_dir = sp.configs["gov"].data_dir
        # The provider reads sources only under its data directory: a hard link puts the
        # table there without copying it.
        os.link(path, data_dir / "admissions.csv")
        gov = admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["gov"]))
        lab = admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["a"]))
        ask = compute_pb2_grpc.ComputeServiceStub(admin_channel(sp.configs["a"])).Ask
        calls: dict[str, Callable[[str], int]] = {}
        answered: list[str] = []
        for name, spec in OFFERS.items():
            product = f"admissions-{name.replace('_', '-')}"
            description = {
                "id": product,
                "title": product,
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
                        "compute": spec,
                    }
                ],
            }
            gov.AddProduct(
                admin_pb2.AddProductRequest(description=json.dumps(description), format="json"),
                timeout=30,
            )
            info = lab.StartNegotiation(
                admin_pb2.StartNegotiationRequest(
                    provider="gov",
                    product_id=product,
                    offer_id="o1",
                    purpose="research",
                    wait_ms=20_000,
                ),
                timeout=30,
            )

            def once(text: str, agreement: str = info.agreement_id) -> int:
                request = compute_pb2.ComputeRequest(agreement_id=agreement, question=text)
                response = ask(request, timeout=120)
                answered.append(response.computation_id)
                return len(json.loads(response.answer)["rows"])

            calls[name] = once

        # The consumer's own record, read as any reader of its database may (read-only,
        # beside the connector, whichever process it runs in).
        records = sqlite3.connect(
            f"file:{sp.configs['a'].data_dir / 'tds.db'}?mode=ro", uri=True, timeout=30
        )

        def settle() -> None:
            # Confirmed on the consumer's side only once the provider took it (the
            # confirmation is owed when the answer has gone, so poll rather than ask the
            # sender, which may not have been told yet).
            deadline = time.monotonic() + 30
            while answered:
                row = records.execute(
                    "SELECT state FROM computation WHERE id = ?", (answered[-1],)
                ).fetchone()
                if row is not None and row[0] == CONFIRMED:
                    answered.clear()
                elif time.monotonic() > deadline:
                    raise TimeoutError("the consumer's confirmation did not reach the provider")
                else:
                    time.sleep(0.001)

        try:
            yield Connectors(calls, settle, lambda: _floor(sp, data_dir), pids)
        finally:
            records.close()


def _run_pair(
    path: Path, root: Path, rounds: int, direct: Direct, *, served: bool
) -> dict[str, Any]:
    """Each offer's rounds between the two connectors, and the floor."""
    out: dict[str, Any] = {
        "layout": "tds serve processes" if served else "threads of this process",
    }
    with _connectors(path, root, served=served) as pair:
        pids = pair.pids

        def cpu_of() -> dict[str, float]:
            return {p: cpu_seconds(pid) for p, pid in pids.items()}

        for name, once in pair.calls.items():
            out[name] = _timed(once, direct, rounds, pair.settle, cpu_of=cpu_of if served else None)
        out["floor"] = pair.floor()
    return out


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--no-connector",
        action="store_true",
        help="skip the run between two connectors in this process",
    )
    ap.add_argument(
        "--served",
        action="store_true",
        help="also run between connectors started as `tds serve` processes",
    )
    args = ap.parse_args()
    results: dict[str, Any] = {
        "rows": args.rows,
        "rounds": args.rounds,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "admissions.csv"
        _write(path, args.rows)
        direct = Direct(path)
        try:
            if not args.no_connector:
                pair = _run_pair(path, Path(tmp) / "space", args.rounds, direct, served=False)
                results["floor"] = pair.pop("floor")
                results["connector"] = pair
            if args.served:
                results["served"] = _run_pair(
                    path, Path(tmp) / "served", args.rounds, direct, served=True
                )
            results["engine"] = _engine(path, direct, args.rounds)
        finally:
            direct.close()
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{args.rows} rows, {args.rounds} rounds (engine load {results['engine']['load_s']} s,"
        f" cube of {results['engine']['cube_cells']} cells built in"
        f" {results['engine']['cube_build_ms']} ms;"
        f" load average {results['load_average_start'][0]} -> {results['load_average_end'][0]})"
    )
    for floor in (results.get("floor"), results.get("served", {}).get("floor")):
        if floor:
            print("floor: " + ", ".join(f"{k} {v}" for k, v in floor.items()))
    for path_name in ("connector", "served", "engine"):
        for name in OFFERS:
            if path_name not in results:
                continue
            r = results[path_name][name]
            cpu = (
                f"CPU {r['tds_cpu_p50_ms']:.2f} ms against {r['duckdb_direct_cpu_p50_ms']:.2f}"
                if "tds_cpu_p50_ms" in r
                else f"CPU per answer {r['cpu_ms_per_answer']} ms"
            )
            print(
                f"{path_name:9s} {name:6s} tds p50 {r['tds_p50_ms']:.2f} ms; DuckDB direct"
                f" {r['duckdb_direct_p50_ms']:.2f} ms, ratio {r['ratio_p50']:.2f} (paired"
                f" {r['ratio_paired_p50']:.2f}; target <= 1.5), overhead"
                f" {r['overhead_p50_ms']:.2f} ms; on tds's table"
                f" {r['duckdb_same_table_p50_ms']:.2f} ms, ratio"
                f" {r['ratio_same_table_p50']:.2f}; {cpu}"
            )


if __name__ == "__main__":
    main()

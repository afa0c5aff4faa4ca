"""``tds audit``: fetch, verify, prove, reconcile and show connector logs."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from connector.audit.auditor import fetch_and_witness
from connector.audit.verify import prove, reconcile, timeline, verify
from connector.cli.output import JSON_HELP, emit, say
from connector.config import load_config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds audit``."""
    audit = sub.add_parser("audit", help="fetch and check connectors' transparency logs")
    a = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    fetch = a.add_parser(
        "fetch",
        help="download a connector's log, cosigning its checkpoint",
        description="Witness the connector's newest checkpoint (verify it is "
        "consistent with the last one you cosigned, then cosign it), and "
        "export the whole log: entries, every checkpoint as exact signed-"
        "note text with cosignatures, the log's vkey and the directory keys.",
    )
    fetch.add_argument("--config", required=True, type=Path, help="your (auditor's) config")
    fetch.add_argument(
        "--connector",
        required=True,
        metavar="ID[@HOST:PORT]",
        help="participant whose log to fetch (address from the registry)",
    )
    fetch.add_argument("--out", required=True, type=Path, help="export directory")
    fetch.add_argument("--no-cosign", action="store_true", help="fetch without witnessing")
    fetch.add_argument("--json", action="store_true", help=JSON_HELP)
    fetch.set_defaults(func=run_fetch)

    ver = a.add_parser("verify", help="check an export offline; names the first bad index")
    ver.add_argument("dir", type=Path, help="an export directory (tds audit fetch --out)")
    ver.add_argument(
        "--known",
        type=Path,
        action="append",
        default=[],
        help="a checkpoint note seen elsewhere that must be consistent (repeatable)",
    )
    ver.add_argument("--json", action="store_true", help=JSON_HELP)
    ver.set_defaults(func=run_verify)

    pr = a.add_parser("prove", help="inclusion proof of one entry against the latest checkpoint")
    pr.add_argument("dir", type=Path, help="an export directory (tds audit fetch --out)")
    pr.add_argument("--index", required=True, type=int, help="the entry's index in the log")
    pr.add_argument("--json", action="store_true", help=JSON_HELP)
    pr.set_defaults(func=run_prove)

    rec = a.add_parser("reconcile", help="receipts naming both parties match in both logs")
    rec.add_argument("dir_a", type=Path, help="one party's export directory")
    rec.add_argument("dir_b", type=Path, help="the other party's export directory")
    rec.add_argument("--json", action="store_true", help=JSON_HELP)
    rec.set_defaults(func=run_reconcile)

    show = a.add_parser("show", help="a readable timeline of an export")
    show.add_argument("dir", type=Path, help="an export directory (tds audit fetch --out)")
    show.add_argument("--participant", help="only entries naming this participant")
    show.add_argument("--product", help="only entries about this product")
    show.add_argument("--type", dest="kind", help="only entries whose type starts with this")
    show.add_argument("--json", action="store_true", help=JSON_HELP)
    show.set_defaults(func=run_show)


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        width = 30
        filled = width * done // max(total, 1)
        print(
            f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} entries",
            end="" if done < total else "\n",
            file=sys.stderr,
            flush=True,
        )


def run_fetch(args: argparse.Namespace) -> int:
    """Witness and export one connector's log."""
    cfg = load_config(args.config)
    manifest = fetch_and_witness(
        cfg, args.connector, args.out, cosign=not args.no_cosign, progress=_progress, narrate=say
    )
    emit(
        manifest,
        f"Fetched {manifest['entries']} of {manifest['size']} entries and "
        f"{manifest['checkpoints']} checkpoints of {manifest['participant']} into {args.out}"
        + ("" if manifest["complete"] else " (only entries naming you)"),
        as_json=args.json,
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Verify an export; exit 1 if anything is wrong."""
    known = [p.read_text() for p in args.known]
    report = verify(args.dir, known=known)
    if report.ok:
        witnesses = ", ".join(f"{w} ({n})" for w, n in sorted(report.cosignatures.items()))
        human = (
            f"OK: {report.origin}: {report.size} entries, {report.checkpoints} checkpoints "
            f"verified, {report.receipts} receipts"
            + (f", {report.computations} computation receipts" if report.computations else "")
            + f"; cosigned by {witnesses or 'nobody'}"
        )
    else:
        first = report.first_bad_index
        human = "\n".join(
            [
                f"FAILED: {report.origin}"
                + (f": first bad index {first}" if first is not None else "")
            ]
            + [f"  - {p.what}" for p in report.problems[:20]]
            + ([f"  ... {len(report.problems) - 20} more"] if len(report.problems) > 20 else [])
        )
    emit(report.as_json(), human, as_json=args.json)
    return 0 if report.ok else 1


def run_prove(args: argparse.Namespace) -> int:
    """Print and check an inclusion proof."""
    result = prove(args.dir, args.index)
    emit(
        result,
        f"Entry {args.index} is in the tree of size {result['tree_size']} "
        f"(checkpoint {result['checkpoint']}, root {result['root']}); proof:\n  "
        + "\n  ".join(result["proof"]),
        as_json=args.json,
    )
    return 0


def run_reconcile(args: argparse.Namespace) -> int:
    """Compare receipts in two exports; exit 1 on any difference."""
    result = reconcile(args.dir_a, args.dir_b)
    lines = [
        f"{result['a']} and {result['b']}: {result['matched']} receipts match" + _of_them(result)
    ]
    for key, label in (
        ("only_in_a", f"only in {result['a']}'s log"),
        ("only_in_b", f"only in {result['b']}'s log"),
        ("differ", "differ between the logs"),
    ):
        lines += [f"  - {'/'.join(k)} {label}" for k in result[key]]
    emit(result, "\n".join(lines), as_json=args.json)
    return 0 if result["ok"] else 1


def _of_them(result: dict[str, Any]) -> str:
    """ " (2 of them computations, 15 stream windows)", or "" when all are transfers."""
    counts = [
        (result[key], label)
        for key, label in (("computations", "computations"), ("windows", "stream windows"))
        if result.get(key)
    ]
    if not counts:
        return ""
    (n, label), rest = counts[0], counts[1:]
    return f" ({n} of them {label}" + "".join(f", {m} {other}" for m, other in rest) + ")"


def _describe(entry: dict[str, Any]) -> str:
    when = dt.datetime.fromtimestamp(entry.get("time_ms", 0) / 1000, dt.UTC)
    data = json.dumps(entry.get("data", {}), ensure_ascii=False, sort_keys=True)
    if len(data) > 100:
        data = data[:97] + "..."
    return (
        f"{entry.get('index', '?'):>7} {when:%Y-%m-%d %H:%M:%S} {entry.get('kind', ''):<26} "
        f"{entry.get('actor', ''):<10} {data}"
    )


def run_show(args: argparse.Namespace) -> int:
    """Print a timeline."""
    rows = timeline(args.dir, participant=args.participant, product=args.product, kind=args.kind)
    emit(rows, "\n".join(_describe(r) for r in rows) or "(no entries match)", as_json=args.json)
    return 0

"""``tds compute``: ask a question under a compute agreement; only the answer comes back."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from connector._proto.tds.v1 import compute_pb2, compute_pb2_grpc
from connector.audit import jws
from connector.cli.output import JSON_HELP, emit, say
from connector.config import load_config
from connector.errors import ConfigError
from connector.node.clients import admin_channel
from connector.rpc.channel import calling

__all__ = ["add_parser"]

_CELL = 24
"""The widest a table cell is printed (longer text is cut with …)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds compute``."""
    cp = sub.add_parser(
        "compute",
        help="ask a question under a compute agreement (可用不可见: answers, never rows)",
        description="Your connector sends the question to the provider, which computes it "
        "where the data lives under the agreement's rules: declared dimensions and "
        "aggregates only, groups smaller than k suppressed, noise added and ε spent when "
        "the offer asks. The answer comes with a computation receipt the provider signed; "
        "your connector checks the answer against it, countersigns, and both log it.",
        epilog='example: tds compute --agreement ag-… "SELECT district, count(*), '
        'avg(cost) FROM product WHERE year = 2026 GROUP BY district" --config tds.toml',
    )
    cp.add_argument("question", help="one SELECT … FROM product, or the same question as JSON")
    cp.add_argument("--agreement", required=True, help="the agreement id (tds agreements list)")
    cp.add_argument("--out", type=Path, help="also write the answer (canonical JSON) to this file")
    cp.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    cp.add_argument("--config", required=True, type=Path, help="your connector's config")
    cp.add_argument("--json", action="store_true", help=JSON_HELP)
    cp.set_defaults(func=run_compute)


def _text(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.2f}"
    elif value is None:
        text = "-"
    else:
        text = str(value)
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def table(columns: list[str], rows: list[list[Any]]) -> str:
    """The answer as a small aligned text table."""
    cells = [[_text(c) for c in columns]] + [[_text(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line.rstrip() for line in lines)


def run_compute(args: argparse.Namespace) -> int:
    """Ask, print the answer and what it cost."""
    out: Path | None = args.out
    if out is not None and out.exists() and (out.is_dir() or not args.force):
        raise ConfigError(f"{out} exists; choose another --out or add --force")
    stub = compute_pb2_grpc.ComputeServiceStub(admin_channel(load_config(args.config)))
    with calling("your connector"):
        response: compute_pb2.ComputeResponse = stub.Ask(
            compute_pb2.ComputeRequest(agreement_id=args.agreement, question=args.question),
            timeout=180,
        )
    answer = json.loads(response.answer)
    receipt = jws.payload_of(response.receipt, "computation receipt")
    if out is not None:
        out.write_bytes(response.answer)
        say(f"answer written to {out}", quiet=args.json)
    spent, left = receipt.get("epsilon_spent", 0), receipt.get("epsilon_left", 0)
    lines = [
        table(list(answer["columns"]), list(answer["rows"]))
        if answer["rows"]
        else "  (no group large enough to show)"
    ]
    lines.append(_shown(len(answer["rows"]), int(answer["suppressed"]), noisy=bool(spent)))
    if spent:
        lines.append(f"ε spent {spent:g} (differential privacy), {left:g} left of the budget")
    lines.append(
        f"computation {response.computation_id}: receipt signed by both, in both logs "
        f"(answer SHA-256 {receipt.get('answer_sha256', '')[:16]}…)"
    )
    emit(
        {
            "computation": response.computation_id,
            "answer": answer,
            "receipt": receipt,
            "signed_receipt": response.receipt,
        },
        "\n".join(lines),
        as_json=args.json,
    )
    return 0


def _shown(shown: int, suppressed: int, *, noisy: bool) -> str:
    """``16 groups shown, 2 suppressed (…)``: the reason said only when a group was."""
    line = f"{shown} group{'' if shown == 1 else 's'} shown, "
    if noisy:
        return line + (
            f"{suppressed} suppressed (fewer rows than the offer's k; under differential "
            "privacy this count is noisy)"
        )
    if suppressed:
        return line + f"{suppressed} suppressed (fewer rows than the offer's k)"
    return line + "none suppressed"

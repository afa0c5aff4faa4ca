"""The disclosure report of public data operation (公共数据授权运营 信息披露).

For one calendar year, per authorised operator: which public products it received, under
which grant, for which purposes, how many completed transfers and bytes, and how many
answers it was given instead of copies (compute-to-data, 可用不可见) with the ε they spent,
and how many messages and bytes it was streamed (live data, counted per countersigned
window, in the year the provider logged the window). The figures come from the provider's
own audit log (every dual-signed receipt of the year: transfer, computation and stream
window receipts alike), the agreements (which name the grant they rest
on) and the metering; the grants' terms come from the operator's public register. Nothing
here is taken from the operator's word alone: each row lists the log indices of the
receipts it counts, so an auditor can check it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from connector._proto.tds.v1 import registry_pb2
from connector.audit.log import TransparencyLog
from connector.audit.receipts import parse_receipt
from connector.audit.verify import COMPUTATION_KIND, RECEIPT_KIND, WINDOW_KIND
from connector.audit.window_receipts import parse_window
from connector.compute.receipt import parse_computation_receipt
from connector.errors import ConnectorError, InvalidRequest, NotFound
from connector.negotiation.agreement import Agreement, parse_agreement
from connector.negotiation.store import NegotiationStore
from connector.transfer.store import TransferStore

__all__ = ["disclosure_report"]

_PAGE = 5000


@dataclass
class _Row:
    agreement: Agreement
    transfers: int = 0
    bytes: int = 0
    computations: int = 0
    epsilon: float = 0.0
    windows: int = 0
    messages: int = 0
    stream_bytes: int = 0
    receipt_log_indices: list[int] = field(default_factory=list)


def _period_ms(year: int) -> tuple[int, int]:
    if not 2000 <= year <= 9999:
        raise InvalidRequest(f"period must be a calendar year such as 2026, got {year}")
    start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def _grant_json(g: registry_pb2.OperationGrant) -> dict[str, Any]:
    return {
        "id": g.id,
        "scope": list(g.scope),
        "purposes": list(g.purposes),
        "start_ns": str(g.start_ns),
        "end_ns": str(g.end_ns),
        "body": g.body,
        "revoked": g.revoked,
    }


_RECEIPT_KINDS = (RECEIPT_KIND, COMPUTATION_KIND, WINDOW_KIND)
_SLACK_MS = 86_400_000
"""How far a receipt's log entry may be recorded from the receipt's own time (the entry
is written when the provider countersigns, seconds after the end the receipt states)."""


def _receipt_entries(
    log: TransparencyLog, start_ms: int, end_ms: int, size: int
) -> Iterator[tuple[int, bytes]]:
    """The receipt entries among the log's first ``size`` recorded around ``[start_ms,
    end_ms)``, in log order, read by the log's (kind, time) index rather than by reading
    the whole log; each receipt's own time then decides whether it falls in the period."""
    found: list[tuple[int, bytes]] = []
    for kind in _RECEIPT_KINDS:
        after = -1
        while page := log.entries_of_kind(
            kind, None, start_ms - _SLACK_MS, end_ms + _SLACK_MS, limit=_PAGE, after=after
        ):
            found += page
            after = page[-1][0]
    yield from sorted(e for e in found if e[0] < size)


def disclosure_report(
    *,
    provider: str,
    year: int,
    log: TransparencyLog,
    negotiations: NegotiationStore,
    transfers: TransferStore,
    grants: Callable[[], list[registry_pb2.OperationGrant]],
) -> dict[str, Any]:
    """The report as a JSON-ready document."""
    start_ms, end_ms = _period_ms(year)
    rows: dict[str, _Row] = {}
    size = log.size
    for index, body in _receipt_entries(log, start_ms, end_ms, size):
        entry = json.loads(body)
        kind = entry.get("kind")
        if kind == RECEIPT_KIND:
            receipt = parse_receipt(entry["data"]["receipt"])
            agreement_id, at_ms, who = receipt.agreement, receipt.ended_ms, receipt.provider
        elif kind == COMPUTATION_KIND:
            computed = parse_computation_receipt(entry["data"]["receipt"])
            agreement_id, at_ms = computed.agreement, computed.computed_ms
            who = computed.provider
        elif kind == WINDOW_KIND:
            # A window receipt carries no time of its own: the entry's is when the
            # provider countersigned it.
            window = parse_window(entry["data"]["receipt"])
            agreement_id, at_ms, who = window.agreement, entry["time_ms"], window.provider
        else:
            continue
        if who != provider or not start_ms <= at_ms < end_ms:
            continue
        row = rows.get(agreement_id)
        if row is None:
            try:
                signed = negotiations.by_agreement(agreement_id).agreement or ""
                agreement = parse_agreement(signed)
            except (NotFound, ConnectorError):
                continue
            if not agreement.registration_code:
                continue  # not public data
            row = rows[agreement_id] = _Row(agreement)
        if kind == RECEIPT_KIND:
            row.transfers += 1
            row.bytes += receipt.size
        elif kind == COMPUTATION_KIND:
            row.computations += 1
            row.epsilon += computed.epsilon_spent
        else:
            row.windows += 1
            row.messages += window.window.count
            row.stream_bytes += window.window.bytes
        row.receipt_log_indices.append(index)
    try:
        register = {g.id: g for g in grants()}
        register_error = ""
    except ConnectorError as exc:
        register, register_error = {}, str(exc)
    metering = {m.agreement_id: m for m in transfers.metering()}
    operators: dict[str, dict[str, Any]] = {}
    for agreement_id, row in sorted(rows.items()):
        a = row.agreement
        grant_id = str(a.obligations.get("operation_grant", ""))
        op = operators.setdefault(
            a.consumer,
            {
                "operator": a.consumer,
                "grants": {},
                "products": [],
                "transfers": 0,
                "bytes": 0,
                "computations": 0,
                "messages": 0,
                "stream_bytes": 0,
            },
        )
        if grant_id and grant_id not in op["grants"]:
            held = register.get(grant_id)
            op["grants"][grant_id] = _grant_json(held) if held else {"id": grant_id}
        m = metering.get(agreement_id)
        op["products"].append(
            {
                "product": a.product,
                "registration_code": a.registration_code,
                "agreement": agreement_id,
                "grant": grant_id,
                "purpose": a.purpose,
                "transfers": row.transfers,
                "bytes": row.bytes,
                "computations": row.computations,
                "epsilon_spent": row.epsilon,
                "stream_windows": row.windows,
                "messages": row.messages,
                "stream_bytes": row.stream_bytes,
                "receipt_log_indices": row.receipt_log_indices,
                "metered_all_time": (
                    {
                        "started": m.transfers,
                        "completed": m.completed,
                        "bytes": m.bytes,
                        "computations": m.computations,
                        "epsilon_spent": m.epsilon_spent_micro / 1_000_000,
                        "messages": m.messages,
                    }
                    if m
                    else {}
                ),
            }
        )
        op["transfers"] += row.transfers
        op["bytes"] += row.bytes
        op["computations"] += row.computations
        op["messages"] += row.messages
        op["stream_bytes"] += row.stream_bytes
    listed = []
    for op in operators.values():
        op["grants"] = list(op["grants"].values())
        op["purposes"] = sorted({p["purpose"] for p in op["products"]})
        listed.append(op)
    return {
        "provider": provider,
        "period": year,
        "log_size": size,
        "operators": listed,
        "transfers": sum(op["transfers"] for op in listed),
        "bytes": sum(op["bytes"] for op in listed),
        "computations": sum(op["computations"] for op in listed),
        "messages": sum(op["messages"] for op in listed),
        "stream_bytes": sum(op["stream_bytes"] for op in listed),
        **({"grant_register_error": register_error} if register_error else {}),
    }

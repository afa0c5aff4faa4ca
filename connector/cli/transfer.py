"""``tds transfer`` (receive a product under an agreement), ``tds data`` (holdings) and
``tds report metering`` (the provider's counts)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc
from connector.cli.output import JSON_HELP, emit, say, utc_text
from connector.cli.pages import follow_pages
from connector.cli.progress import ByteProgress, human_bytes
from connector.cli.subscribe import list_streams, stop_stream
from connector.config import load_config
from connector.errors import ConfigError, VerificationError
from connector.node.clients import admin_channel
from connector.rpc.channel import calling

__all__ = ["add_parser", "transfer_json"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds transfer``, ``tds data`` and ``tds report``."""
    tr = sub.add_parser(
        "transfer",
        help="receive a product under an agreement (progress bar, resumes by itself)",
        description="Your connector receives the product from the provider under the "
        "agreement, checks size and SHA-256 against the provider's manifest, signs the "
        "receipt and gets it countersigned; the verified bytes are then written to --out. "
        "A broken connection or a provider restart is resumed from the bytes held.",
    )
    tr.add_argument("--agreement", default="", help="the agreement id (tds agreements list)")
    tr.add_argument(
        "--resume", default="", metavar="TRANSFER", help="resume an unfinished transfer"
    )
    tr.add_argument("--out", required=True, type=Path, help="file to write the received data to")
    tr.add_argument(
        "--force", action="store_true", help="overwrite --out if it exists (never a directory)"
    )
    tr.add_argument("--push", action="store_true", help="ask the provider to push the data")
    tr.add_argument(
        "--dsp",
        metavar="URL",
        default="",
        help="transfer over the Dataspace Protocol 2025-1 from the provider's DSP binding at "
        "this https URL (on its registered host) instead of gRPC, as an HttpData pull; "
        "your connector must serve its own [dsp] binding, where the provider's start "
        "message arrives",
    )
    tr.add_argument("--config", required=True, type=Path, help="your connector's config")
    tr.add_argument("--json", action="store_true", help=JSON_HELP)
    tr.set_defaults(func=run_transfer)

    data = sub.add_parser("data", help="data your connector holds and transfers it made")
    ds = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    ls = ds.add_parser("list", help="holdings: data received under agreements and kept")
    ls.add_argument("--all", action="store_true", help="every transfer of both roles")
    ls.add_argument("--config", required=True, type=Path, help="your connector's config")
    ls.add_argument("--json", action="store_true", help=JSON_HELP)
    ls.set_defaults(func=run_data_list)
    st = ds.add_parser(
        "stop",
        help="terminate a transfer that is not complete, or a stream (either side)",
        description="A transfer id (tr-…) terminates that transfer. An agreement id (ag-…) "
        "ends the stream under it for good: one you receive (the provider is told) or one "
        "you provide (a running subscription stops within a second). Logged; TERMINATED.",
    )
    st.add_argument(
        "transfer",
        metavar="ID",
        help="a transfer id (tds data list --all) or a stream's agreement id (tds data list)",
    )
    st.add_argument("--reason", default="", help="why; recorded, and sent to the other side")
    st.add_argument("--config", required=True, type=Path, help="your connector's config")
    st.add_argument("--json", action="store_true", help=JSON_HELP)
    st.set_defaults(func=run_data_stop)

    for verb, text, more in (
        (
            "suspend",
            "suspend a transfer run over the Dataspace Protocol (either side)",
            "Its data address is refused (a pull in flight stops within a second) until "
            "you resume it; the other side is sent a TransferSuspensionMessage. A process "
            "the other side suspended is resumed by that side only.",
        ),
        (
            "resume",
            "resume a transfer you suspended",
            "The other side is sent a TransferStartMessage (a provider's carries the data "
            "address again); the consumer's pull goes on from the bytes it holds.",
        ),
    ):
        cmd = ds.add_parser(verb, help=text, description=more)
        cmd.add_argument("transfer", metavar="ID", help="a transfer id (tds data list --all)")
        if verb == "suspend":
            cmd.add_argument("--reason", default="", help="why; sent to the other side")
        cmd.add_argument("--config", required=True, type=Path, help="your connector's config")
        cmd.add_argument("--json", action="store_true", help=JSON_HELP)
        cmd.set_defaults(func=run_data_control, verb=verb)

    rep = sub.add_parser("report", help="reports from your connector's records")
    rs = rep.add_subparsers(dest="report_command", required=True, metavar="COMMAND")
    me = rs.add_parser(
        "metering",
        help="transfers, bytes, answers and ε per agreement and per consumer",
        description=(
            "Per agreement under which you provide data: transfers (against the offer's "
            "limit) and bytes, how many completed, computation answers and, under "
            "differential privacy, the ε spent of the budget, and messages streamed; then "
            "the totals per consumer."
        ),
    )
    me.add_argument("--config", required=True, type=Path, help="your connector's config")
    me.add_argument("--json", action="store_true", help=JSON_HELP)
    me.set_defaults(func=run_metering)

    di = rs.add_parser(
        "disclosure",
        help="public data released to authorised operators in a year (government)",
        description=(
            "Per authorised operator: the public products it received, the grant each "
            "agreement rests on, purposes, completed transfers and bytes in the year, "
            "counted from the dual-signed receipts in your log (their indices are listed)."
        ),
    )
    di.add_argument("--config", required=True, type=Path, help="your connector's config")
    di.add_argument("--period", required=True, type=int, metavar="YEAR", help="e.g. 2026")
    di.add_argument("--json", action="store_true", help=JSON_HELP)
    di.set_defaults(func=run_disclosure)


def _admin(args: argparse.Namespace) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(admin_channel(load_config(args.config)))


def transfer_json(t: admin_pb2.TransferInfo) -> dict[str, Any]:
    """A transfer as `tds data list --json` and the console show it."""
    return {
        "transfer": t.transfer_id,
        "role": t.role,
        "agreement": t.agreement_id,
        "product": t.product_id,
        "counterparty": t.counterparty,
        "state": t.state,
        "size": t.size,
        "sha256": t.sha256,
        "push": t.push,
        "format": t.format,
        "fields": list(t.fields),
        "obligations": json.loads(t.obligations_json or "{}"),
        "reason": t.reason,
        "started_ms": t.started_ms,
        "ended_ms": t.ended_ms,
        "deleted_ms": t.deleted_ms,
        "receipt": t.receipt,
    }


def _export(
    stub: admin_pb2_grpc.AdminServiceStub, transfer_id: str, out: Path, sha256: str
) -> None:
    """Write a holding to ``out`` (via a temporary file) and check its hash again."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    h = hashlib.sha256()
    try:
        with tmp.open("wb") as f, calling("your connector"):
            for chunk in stub.ReadHolding(
                admin_pb2.ReadHoldingRequest(transfer_id=transfer_id), timeout=3600
            ):
                f.write(chunk.data)
                h.update(chunk.data)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != sha256:
            raise VerificationError(f"the exported copy's sha256 {h.hexdigest()} is not {sha256}")
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``--out`` that cannot take the data, before anything is transferred:
    a transfer counts against the agreement's limits, so finding out afterwards costs one."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory: name a file to write the data to")
    if (out.exists() or out.is_symlink()) and not force:
        raise ConfigError(
            f"--out {out} exists: choose another file, or pass --force to overwrite it"
        )
    # The nearest directory that exists is where the file (or its missing parents) go.
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {parent} is not writable")


def run_transfer(args: argparse.Namespace) -> int:
    """Receive under an agreement, then export the verified bytes."""
    if not args.agreement and not args.resume:
        raise ConfigError("give --agreement ID (or --resume TRANSFER)")
    _check_out(args.out, args.force)
    stub = _admin(args)
    bar: ByteProgress | None = None
    final: admin_pb2.TransferProgress | None = None
    request = admin_pb2.TransferRequest(
        agreement_id=args.agreement, push=args.push, transfer_id=args.resume, dsp_url=args.dsp
    )
    try:
        with calling("your connector"):
            for event in stub.Transfer(request, timeout=24 * 3600):
                if bar is None:
                    bar = ByteProgress(event.transfer_id[:15], event.size)
                    say(
                        f"Transfer {event.transfer_id}: {human_bytes(event.size)}, "
                        f"sha256 {event.sha256[:16]}…",
                        quiet=args.json,
                    )
                if event.event == "resuming":
                    # A DSP process suspended by either side says so; a break is a break.
                    suspended = event.detail.startswith("suspended by")
                    bar.update(
                        event.received, event.detail if suspended else "resuming after a break"
                    )
                elif event.event in ("receiving", "verified"):
                    bar.update(event.received)
                elif event.event == "completed":
                    bar.update(event.size)
                    final = event
    finally:
        if bar is not None:
            bar.close()
    if final is None:
        raise VerificationError("the connector ended the transfer without a receipt")
    _export(stub, final.transfer_id, args.out, final.sha256)
    info = transfer_json(final.transfer)
    info["receipt_id"] = final.receipt_id
    info["out"] = str(args.out)
    emit(
        info,
        f"Received {human_bytes(final.size)} into {args.out}\n"
        f"  sha256   {final.sha256} (verified)\n"
        f"  receipt  {final.receipt_id} (signed by you, countersigned by "
        f"{final.transfer.counterparty})",
        as_json=args.json,
    )
    return 0


def run_data_list(args: argparse.Namespace) -> int:
    """Holdings (or every transfer)."""
    stub = _admin(args)

    def fetch(token: str, size: int | None) -> tuple[list[admin_pb2.TransferInfo], str, int]:
        resp = stub.ListTransfers(
            admin_pb2.ListTransfersRequest(
                holdings=not args.all, page_token=token, page_size=size or 0
            ),
            timeout=30,
        )
        return list(resp.transfers), resp.next_page_token, resp.max_page_size

    with calling("your connector"):
        rows = follow_pages(fetch, transfer_json, label="transfers")
    for r in rows:
        r.pop("receipt")
    lines = [
        f"{r['transfer']:<36} {r['role']:<8} {r['state']:<10} {r['product']:<20} "
        f"{human_bytes(r['size']):>10}  {r['counterparty']}" + _delete_after(r["obligations"])
        for r in rows
    ]
    streams = [s for s in list_streams(args.config) if args.all or not s["deleted"]]
    lines += [
        f"{s['agreement']:<36} stream   {s['state']:<10} {s['product']:<20} "
        f"{human_bytes(s['bytes']):>10}  {s['provider']}  {s['messages']} messages to "
        f"sequence {s['kept_sequence']} in {s['windows']} windows"
        + ("  (deleted)" if s["deleted"] else "")
        for s in streams
    ]
    # JSON: the transfers' rows, then the streams' (``"kind": "stream"``).
    emit([*rows, *streams], "\n".join(lines) or "(nothing held)", as_json=args.json)
    return 0


def run_data_stop(args: argparse.Namespace) -> int:
    """Terminate a transfer, or a stream (named by its agreement)."""
    if args.transfer.startswith("ag-"):
        return stop_stream(args)
    with calling("your connector"):
        t = _admin(args).TerminateTransfer(
            admin_pb2.TerminateOwnTransferRequest(transfer_id=args.transfer, reason=args.reason),
            timeout=30,
        )
    emit(transfer_json(t), f"Transfer {t.transfer_id} is {t.state}", as_json=args.json)
    return 0


def run_data_control(args: argparse.Namespace) -> int:
    """Suspend or resume a DSP transfer process."""
    stub = _admin(args)
    request = admin_pb2.TransferControlRequest(
        transfer_id=args.transfer, reason=getattr(args, "reason", "")
    )
    with calling("your connector"):
        if args.verb == "suspend":
            t = stub.SuspendTransfer(request, timeout=30)
        else:
            t = stub.ResumeTransfer(request, timeout=30)
    emit(transfer_json(t), f"Transfer {t.transfer_id} is {t.state}", as_json=args.json)
    return 0


def _delete_after(obligations: dict[str, Any]) -> str:
    """When a holding must go, as a UTC time (nothing for no or a far-future limit)."""
    ns = obligations.get("delete_after_ns")
    if not isinstance(ns, int) or ns >= 253402300800 * 10**9:  # beyond year 9999
        return ""
    return f"  delete after {utc_text(ns, '%Y-%m-%d %H:%M')} UTC"


def _computations(a: dict[str, Any]) -> str:
    """Answers given and ε spent of the budget (compute-to-data), when there were any."""
    if not a["computations"]:
        return ""
    text = f", {a['computations']} answers"
    if a["epsilon_budget"]:
        left = max(0.0, a["epsilon_budget"] - a["epsilon_spent"])
        text += f", ε {a['epsilon_spent']:g} of {a['epsilon_budget']:g} spent ({left:g} left)"
    return text


def _messages(a: dict[str, Any]) -> str:
    """Stream messages delivered (of the limit), when there were any or a limit is set."""
    if not a["messages"] and not a["max_messages"]:
        return ""
    return f", {a['messages']}/{a['max_messages'] or '∞'} messages streamed"


def run_metering(args: argparse.Namespace) -> int:
    """Per agreement and per consumer."""
    stub = _admin(args)

    def fetch(token: str, size: int | None) -> tuple[list[admin_pb2.AgreementMetering], str, int]:
        resp = stub.MeteringReport(
            admin_pb2.MeteringReportRequest(page_token=token, page_size=size or 0), timeout=30
        )
        return list(resp.agreements), resp.next_page_token, resp.max_page_size

    with calling("your connector"):
        found = follow_pages(fetch, lambda m: m, label="agreements metered")
    agreements = [
        {
            "agreement": m.agreement_id,
            "consumer": m.consumer,
            "product": m.product_id,
            "transfers": m.transfers,
            "bytes": m.bytes,
            "completed": m.completed,
            "completed_bytes": m.completed_bytes,
            "max_transfers": m.max_transfers,
            "max_bytes": m.max_bytes,
            "computations": m.computations,
            "epsilon_spent": m.epsilon_spent,
            "epsilon_budget": m.epsilon_budget,
            "messages": m.messages,
            "max_messages": m.max_messages,
        }
        for m in found
    ]
    consumers: dict[str, dict[str, int]] = {}
    for a in agreements:
        c = consumers.setdefault(
            str(a["consumer"]),
            {"agreements": 0, "transfers": 0, "bytes": 0, "completed": 0, "messages": 0},
        )
        c["agreements"] += 1
        for key in ("transfers", "bytes", "completed", "messages"):
            c[key] += int(a[key])  # type: ignore[call-overload]
    lines = ["Per agreement:"] + [
        f"  {a['agreement']:<36} {a['consumer']:<12} {a['product']:<20} "
        f"{a['transfers']}/{a['max_transfers'] or '∞'} transfers, "
        f"{human_bytes(int(a['bytes']))} ({a['completed']} completed)"  # type: ignore[call-overload]
        + _computations(a)
        + _messages(a)
        for a in agreements
    ]
    lines += ["Per consumer:"] + [
        f"  {name:<12} {c['agreements']} agreements, {c['transfers']} transfers, "
        f"{human_bytes(c['bytes'])}, {c['completed']} completed"
        + (f", {c['messages']} messages streamed" if c["messages"] else "")
        for name, c in sorted(consumers.items())
    ]
    emit(
        {"agreements": agreements, "consumers": consumers},
        "\n".join(lines) if agreements else "(no transfers yet)",
        as_json=args.json,
    )
    return 0


def _streamed(part: dict[str, Any]) -> str:
    """Messages and bytes streamed, when there were any."""
    if not part.get("messages"):
        return ""
    return f", {part['messages']} messages ({human_bytes(part['stream_bytes'])}) streamed"


def run_disclosure(args: argparse.Namespace) -> int:
    """The disclosure report of public data operation."""
    with calling("your connector"):
        resp = _admin(args).DisclosureReport(
            admin_pb2.DisclosureReportRequest(period=args.period), timeout=60
        )
    report = json.loads(resp.report_json)
    lines = [
        f"Public data released by {report['provider']} in {report['period']}: "
        f"{report['transfers']} transfers, {human_bytes(report['bytes'])}" + _streamed(report)
    ]
    for op in report["operators"]:
        grants = ", ".join(
            f"{g['id']} ({g.get('body', '?')}; scope {','.join(g.get('scope', []))})"
            for g in op["grants"]
        )
        lines.append(
            f"  {op['operator']}: {op['transfers']} transfers, {human_bytes(op['bytes'])}"
            f"{_streamed(op)}, purposes {', '.join(op['purposes'])}; "
            f"grants {grants or 'none recorded'}"
        )
        for p in op["products"]:
            lines.append(
                f"    {p['product']} [{p['registration_code']}] under {p['agreement']}: "
                f"{p['transfers']} transfers, {human_bytes(p['bytes'])}{_streamed(p)} "
                f"(receipts at log indices {p['receipt_log_indices']})"
            )
    if not report["operators"]:
        lines.append("  (no public data released in this period)")
    emit(report, "\n".join(lines), as_json=args.json)
    return 0

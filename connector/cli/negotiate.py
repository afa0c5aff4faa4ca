"""``tds negotiate``, ``tds negotiations`` and ``tds agreements``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc
from connector.cli.output import JSON_HELP, emit, say
from connector.cli.pages import follow_pages
from connector.config import load_config
from connector.errors import ConfigError, InvalidRequest, NotFound, Unavailable
from connector.negotiation.agreement import parse_agreement, verify_agreement
from connector.negotiation.dsp import agreement_message, negotiation_message
from connector.negotiation.states import FINAL as FINAL_STATES
from connector.negotiation.states import State
from connector.node.clients import admin_channel, registry_client
from connector.rpc.channel import calling

FINAL = tuple(sorted(state.value for state in FINAL_STATES))
DEFAULT_TIMEOUT = 60.0
# Each call's deadline exceeds the wait asked of the connector by this much: it answers
# when its wait ends, so the deadline trips only when the connector itself does not.
_SLACK = 5.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the negotiation commands."""
    neg = sub.add_parser(
        "negotiate",
        help="ask a provider for a contract (as a consumer)",
        description="Send a contract request for an offer and a purpose; "
        "with --wait, follow it until it is FINALIZED or TERMINATED.",
    )
    neg.add_argument("--config", required=True, type=Path, help="your connector's config")
    neg.add_argument("--provider", required=True, help="the provider's participant id")
    neg.add_argument("--product", required=True, help="the product id (tds catalog list)")
    neg.add_argument("--offer", required=True, help="the id of one of the product's offers")
    neg.add_argument("--purpose", required=True, help="your purpose; the offer must allow it")
    neg.add_argument(
        "--dsp",
        metavar="URL",
        default="",
        help="negotiate over the Dataspace Protocol 2025-1 with the provider's DSP binding "
        "at this https URL (on its registered host) instead of gRPC; your connector must "
        "serve its own [dsp] binding, where the provider's messages arrive",
    )
    neg.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=0.0,
        default=None,
        metavar="SECONDS",
        help="wait for the outcome, FINALIZED or TERMINATED (SECONDS sets --timeout)",
    )
    _add_timeout(neg)
    neg.add_argument("--json", action="store_true", help=JSON_HELP)
    neg.set_defaults(func=run_negotiate)

    ns = sub.add_parser("negotiations", help="list and decide negotiations (admin)")
    nsub = ns.add_subparsers(dest="negotiations_command", required=True, metavar="COMMAND")
    ls = nsub.add_parser("list", help="negotiations, newest first")
    ls.add_argument("--config", required=True, type=Path, help="your connector's config")
    ls.add_argument("--pending", action="store_true", help="only those waiting for approval")
    ls.add_argument(
        "--state",
        default="",
        type=str.upper,
        help="only those in this state (REQUESTED, AGREED, FINALIZED, TERMINATED, ...)",
    )
    ls.add_argument("--json", action="store_true", help=JSON_HELP)
    ls.set_defaults(func=run_list)
    for name, helptext in (
        ("approve", "approve a negotiation waiting for you"),
        ("reject", "reject a negotiation waiting for you"),
        ("terminate", "end a negotiation that is not final"),
        ("show", "one negotiation"),
    ):
        p = nsub.add_parser(name, help=helptext)
        p.add_argument("pid", help="the negotiation's id on your connector (tds negotiations list)")
        p.add_argument("--config", required=True, type=Path, help="your connector's config")
        if name != "show":
            p.add_argument("--reason", default="", help="why; recorded, and sent to the other side")
        p.add_argument("--json", action="store_true", help=JSON_HELP)
        p.add_argument(
            "--dsp",
            action="store_true",
            help="print a Dataspace Protocol 2025-1 ContractNegotiation",
        )
        if name == "show":
            p.add_argument(
                "--wait",
                type=float,
                nargs="?",
                const=0.0,
                metavar="SECONDS",
                help="follow it until it is FINALIZED or TERMINATED (SECONDS sets --timeout)",
            )
            _add_timeout(p)
        p.set_defaults(func=run_decide, action=name)
    for name, helptext, description in (
        (
            "offer",
            "answer a request waiting for you with other terms (as the provider)",
            "Send the consumer a counter-offer: another published offer of the same product "
            "and a purpose, which your contract policy must allow for the requester. The "
            "consumer accepts it (you then agree at once over these terms) or counters.",
        ),
        (
            "counter",
            "answer the provider's offer with other terms (as the consumer)",
            "Send the provider a counter-request on its offer: one of the product's offers "
            "and your purpose, decided by its contract policy as a first request is.",
        ),
        (
            "accept",
            "accept the provider's offer (as the consumer)",
            "Accept the terms the provider offered (tds negotiations show PID); the provider "
            "then sends the agreement signed over them. With --wait, follow it until it is "
            "FINALIZED or TERMINATED.",
        ),
    ):
        p = nsub.add_parser(name, help=helptext, description=description)
        p.add_argument("pid", help="the negotiation's id on your connector (tds negotiations list)")
        p.add_argument("--config", required=True, type=Path, help="your connector's config")
        if name != "accept":
            p.add_argument("--offer", required=True, help="the id of one of the product's offers")
            p.add_argument("--purpose", required=True, help="the one purpose proposed")
        p.add_argument(
            "--wait",
            type=float,
            nargs="?",
            const=0.0,
            metavar="SECONDS",
            help="follow it until it is FINALIZED or TERMINATED (SECONDS sets --timeout)",
        )
        _add_timeout(p)
        p.add_argument("--json", action="store_true", help=JSON_HELP)
        p.set_defaults(func=run_terms, action=name)

    ag = sub.add_parser("agreements", help="signed agreements")
    asub = ag.add_subparsers(dest="agreements_command", required=True, metavar="COMMAND")
    al = asub.add_parser("list", help="agreements this connector holds")
    al.add_argument("--config", required=True, type=Path, help="your connector's config")
    al.add_argument("--json", action="store_true", help=JSON_HELP)
    al.set_defaults(func=run_agreements)
    sh = asub.add_parser("show", help="one agreement (terms and signed document)")
    sh.add_argument("agreement_id", help="the agreement's id (ag-…, tds agreements list)")
    sh.add_argument("--config", required=True, type=Path, help="your connector's config")
    sh.add_argument("--out", type=Path, help="also write the signed agreement to this file")
    sh.add_argument("--json", action="store_true", help=JSON_HELP)
    sh.add_argument(
        "--dsp",
        action="store_true",
        help="print a Dataspace Protocol 2025-1 ContractAgreementMessage",
    )
    sh.set_defaults(func=run_show_agreement)
    vf = asub.add_parser(
        "verify",
        help="check both signatures of an agreement file offline",
        description="Verify the provider's signature and the consumer's "
        "countersignature against the directory keys (fetched once from the "
        "registry with --config, or read from --keys FILE as written by "
        "--save-keys).",
    )
    vf.add_argument("file", type=Path, help="a signed agreement (tds agreements show --out)")
    vf.add_argument(
        "--config", type=Path, help="your connector's config, to fetch the directory keys"
    )
    vf.add_argument("--keys", type=Path, help="directory keys JSON {participant: hex key}")
    vf.add_argument("--save-keys", type=Path, help="write the fetched directory keys here")
    vf.add_argument("--json", action="store_true", help=JSON_HELP)
    vf.set_defaults(func=run_verify)
    rv = asub.add_parser("revoke", help="revoke an agreement you provided")
    rv.add_argument("agreement_id", help="the agreement's id (ag-…, tds agreements list)")
    rv.add_argument("--config", required=True, type=Path, help="your connector's config")
    rv.add_argument(
        "--reason", required=True, help="why; signed into the revocation the consumer gets"
    )
    rv.add_argument("--json", action="store_true", help=JSON_HELP)
    rv.set_defaults(func=run_revoke)


def _admin(config: Path) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(admin_channel(load_config(config)))


def negotiation_json(n: admin_pb2.NegotiationInfo) -> dict[str, Any]:
    """A negotiation as ``--json`` prints it (and the console's pages show it)."""
    return {
        "pid": n.pid,
        "role": n.role,
        "counterparty": n.counterparty,
        "product": n.product_id,
        "offer": n.offer_id,
        "purpose": n.purpose,
        "state": n.state,
        "reasons": list(n.reasons),
        "agreement_id": n.agreement_id,
        "revoked": bool(n.revocation),
    }


def _line(n: admin_pb2.NegotiationInfo) -> str:
    reasons = f"  ({', '.join(n.reasons)})" if n.reasons else ""
    agreement = f"  agreement {n.agreement_id}" if n.agreement_id else ""
    revoked = "  REVOKED" if n.revocation else ""
    return (
        f"{n.pid[:12]}  {n.role:<8} {n.counterparty:<10} {n.product_id}/{n.offer_id} "
        f"for {n.purpose}: {n.state}{reasons}{agreement}{revoked}"
    )


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up after this long, saying why, when your connector has not answered or "
        f"(with --wait) the negotiation is not final (default {DEFAULT_TIMEOUT:.0f} s)",
    )


def _limit(args: argparse.Namespace) -> float:
    """Seconds the command may take: ``--timeout``, else ``--wait SECONDS``, else the default."""
    seconds = args.timeout if args.timeout is not None else (args.wait or DEFAULT_TIMEOUT)
    if not 0 < seconds <= 86400:
        raise InvalidRequest(f"--timeout must be between 0 and 86400 seconds, not {seconds:g}")
    return float(seconds)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _wait_final(
    stub: admin_pb2_grpc.AdminServiceStub,
    ref: admin_pb2.NegotiationRef,
    info: admin_pb2.NegotiationInfo,
    deadline: float,
) -> admin_pb2.NegotiationInfo:
    """Follow a negotiation until it is final: the connector holds each call until then."""
    while info.state not in FINAL and (left := _left(deadline)) > 0:
        wait_ms = max(1, int(min(left, 30.0) * 1000))
        info = stub.GetNegotiation(
            admin_pb2.NegotiationRef(pid=ref.pid, wait_ms=wait_ms),
            timeout=wait_ms / 1000 + _SLACK,
        )
    return info


def _registry_hint(stub: admin_pb2_grpc.AdminServiceStub) -> str:
    """What the connector knows of its registry, when that explains a wait that ran out."""
    try:
        s = stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=_SLACK)
    except grpc.RpcError:
        return ""
    if not s.registry_error:
        return ""
    cached = (
        f"; its cached directory is {max(0, int(time.time()) - s.directory_issued_at)} s old "
        f"(max {s.directory_max_age_seconds})"
        if s.directory_issued_at
        else "; it holds no cached directory"
    )
    return f". Your connector cannot reach the registry ({s.registry_error}){cached}"


def _gave_up(
    stub: admin_pb2_grpc.AdminServiceStub,
    info: admin_pb2.NegotiationInfo,
    seconds: float,
    config: Path,
) -> Unavailable:
    """The error for a negotiation that was not final when the wait ran out."""
    return Unavailable(
        f"gave up after {seconds:g} s: negotiation {info.pid} with {info.counterparty} is "
        f"still {info.state}; your connector goes on with it (follow it with 'tds "
        f"negotiations show {info.pid} --config {config} --wait')" + _registry_hint(stub)
    )


@contextmanager
def _answering(seconds: float) -> Iterator[None]:
    """Calls to the own connector, with a deadline that says what ran out."""
    try:
        with calling("your connector"):
            yield
    except Unavailable as exc:
        if "did not answer in time" not in str(exc):
            raise
        raise Unavailable(
            f"gave up after {seconds:g} s: your connector did not answer in time (it may be "
            "waiting for the registry or the other side); see 'tds status'"
        ) from None


def run_negotiate(args: argparse.Namespace) -> int:
    """Start a negotiation, optionally wait for its outcome, within ``--timeout``."""
    seconds = _limit(args)
    deadline = time.monotonic() + seconds
    stub = _admin(args.config)
    wait = args.wait is not None
    # With --wait, the connector holds the answer until the outcome (up to 30 s a call).
    wait_ms = int(min(seconds, 30.0) * 1000) if wait else 0
    if wait:
        say(f"Requesting {args.product}/{args.offer} from {args.provider}; waiting ...")
    with _answering(seconds):
        info = stub.StartNegotiation(
            admin_pb2.StartNegotiationRequest(
                provider=args.provider,
                product_id=args.product,
                offer_id=args.offer,
                purpose=args.purpose,
                wait_ms=wait_ms,
                dsp_url=args.dsp,
            ),
            timeout=(wait_ms / 1000 + _SLACK) if wait else seconds,
        )
        if wait:
            info = _wait_final(stub, admin_pb2.NegotiationRef(pid=info.pid), info, deadline)
            if info.state not in FINAL:
                raise _gave_up(stub, info, seconds, args.config)
    emit(negotiation_json(info), _line(info), as_json=args.json)
    return 1 if info.state == "TERMINATED" else 0


def run_list(args: argparse.Namespace) -> int:
    """List negotiations."""
    found = _negotiations(
        args.config,
        admin_pb2.ListNegotiationsRequest(state=args.state, pending_approval=args.pending),
    )
    emit(
        [negotiation_json(n) for n in found],
        "\n".join(_line(n) for n in found) or "(none)",
        as_json=args.json,
    )
    return 0


def _negotiations(
    config: Path, request: admin_pb2.ListNegotiationsRequest
) -> list[admin_pb2.NegotiationInfo]:
    """Every negotiation ``request`` filters for, page after page."""
    stub = _admin(config)

    def fetch(token: str, size: int | None) -> tuple[list[admin_pb2.NegotiationInfo], str, int]:
        request.page_token, request.page_size = token, size or 0
        resp = stub.ListNegotiations(request, timeout=30)
        return list(resp.negotiations), resp.next_page_token, resp.max_page_size

    with calling("your connector"):
        return follow_pages(fetch, lambda n: n, label="negotiations")


def run_decide(args: argparse.Namespace) -> int:
    """Approve, reject, terminate or show one negotiation."""
    stub = _admin(args.config)
    ref = admin_pb2.NegotiationRef(pid=args.pid, reason=getattr(args, "reason", ""))
    method = {
        "approve": stub.ApproveNegotiation,
        "reject": stub.RejectNegotiation,
        "terminate": stub.TerminateNegotiation,
        "show": stub.GetNegotiation,
    }[args.action]
    wait = getattr(args, "wait", None)
    seconds = _limit(args) if hasattr(args, "timeout") else 30.0
    deadline = time.monotonic() + seconds
    with _answering(seconds):
        info = method(ref, timeout=seconds)
        if wait is not None:
            info = _wait_final(stub, ref, info, deadline)
            if info.state not in FINAL:
                raise _gave_up(stub, info, seconds, args.config)
    if args.dsp:
        from connector.negotiation.store import Negotiation  # the database stack: only here

        n = Negotiation(
            pid=info.pid,
            role=info.role,
            counterparty=info.counterparty,
            counterparty_pid=info.counterparty_pid,
            product=info.product_id,
            offer=info.offer_id,
            purpose=info.purpose,
            state=State(info.state),
        )
        emit(negotiation_message(n), "", as_json=True)
        return 0
    emit(negotiation_json(info), _line(info), as_json=args.json)
    return 0


def run_terms(args: argparse.Namespace) -> int:
    """Offer, counter or accept terms on one negotiation; optionally wait for its outcome."""
    stub = _admin(args.config)
    seconds = _limit(args)
    deadline = time.monotonic() + seconds
    with _answering(seconds):
        if args.action == "accept":
            info = stub.AcceptNegotiation(admin_pb2.NegotiationRef(pid=args.pid), timeout=seconds)
        else:
            terms = admin_pb2.NegotiationTerms(
                pid=args.pid, offer_id=args.offer, purpose=args.purpose
            )
            method = stub.OfferNegotiation if args.action == "offer" else stub.CounterNegotiation
            info = method(terms, timeout=seconds)
        if args.wait is not None:
            info = _wait_final(stub, admin_pb2.NegotiationRef(pid=args.pid), info, deadline)
            if info.state not in FINAL:
                raise _gave_up(stub, info, seconds, args.config)
    emit(negotiation_json(info), _line(info), as_json=args.json)
    return 1 if info.state == "TERMINATED" else 0


def _agreements(config: Path) -> list[admin_pb2.NegotiationInfo]:
    return _negotiations(config, admin_pb2.ListNegotiationsRequest(agreements=True))


def run_agreements(args: argparse.Namespace) -> int:
    """List agreements."""
    found = _agreements(args.config)
    emit(
        [negotiation_json(n) for n in found],
        "\n".join(_line(n) for n in found) or "(none)",
        as_json=args.json,
    )
    return 0


def run_show_agreement(args: argparse.Namespace) -> int:
    """Show one agreement; optionally save the signed document."""
    for n in _agreements(args.config):
        if n.agreement_id == args.agreement_id:
            terms = parse_agreement(n.agreement)
            if args.out:
                args.out.write_text(n.agreement)
            if args.dsp:
                space = load_config(args.config).participant.space
                emit(agreement_message(terms, space=space), "", as_json=True)
                return 0
            data = {
                **negotiation_json(n),
                "terms": {k: v for k, v in terms.__dict__.items()},
                "signed": n.agreement,
            }
            emit(
                data,
                json.dumps(data["terms"], indent=2, default=list)
                + (f"\nsigned agreement written to {args.out}" if args.out else ""),
                as_json=args.json,
            )
            return 0
    raise NotFound(f"no agreement {args.agreement_id!r} on this connector")


def run_verify(args: argparse.Namespace) -> int:
    """Verify an agreement file offline against directory keys."""
    try:
        signed = args.file.read_text()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"cannot read {args.file}: {exc}") from None
    if args.keys:
        keys_hex: dict[str, str] = json.loads(args.keys.read_text())
    elif args.config:
        registry = registry_client(load_config(args.config))
        try:
            keys_hex = {p.id: p.signing_public_key.hex() for p in registry.list_participants()}
        finally:
            registry.close()
        if args.save_keys:
            args.save_keys.write_text(json.dumps(keys_hex, indent=2, sort_keys=True))
    else:
        raise ConfigError("give --config (fetch the directory keys) or --keys FILE")

    def key_of(participant: str) -> ed25519.Ed25519PublicKey:
        if participant not in keys_hex:
            raise NotFound(f"{participant} is not in the directory keys")
        return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(keys_hex[participant]))

    agreement = verify_agreement(signed, key_of)
    emit(
        {
            "valid": True,
            "agreement": agreement.id,
            "provider": agreement.provider,
            "consumer": agreement.consumer,
        },
        f"OK: agreement {agreement.id} between {agreement.provider} (provider) and "
        f"{agreement.consumer} (consumer) for {agreement.product}/{agreement.offer}: both "
        "signatures verify",
        as_json=args.json,
    )
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Revoke an agreement."""
    with calling("your connector"):
        info = _admin(args.config).RevokeAgreement(
            admin_pb2.RevokeAgreementRequest(agreement_id=args.agreement_id, reason=args.reason),
            timeout=30,
        )
    emit(negotiation_json(info), _line(info), as_json=args.json)
    return 0

"""``tds consent``: an individual's separate consents (PIPL art. 23) — give, withdraw, list."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc
from connector.cli.output import JSON_HELP, emit, parse_date_ns, utc_text
from connector.config import load_config
from connector.node.clients import admin_channel
from connector.rpc.channel import calling


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds consent``."""
    co = sub.add_parser(
        "consent",
        help="give, withdraw and list consents to your personal data (individuals)",
        description=(
            "An individual's connector records each consent it gives, signed with the "
            "individual's key: recipient, purposes, processing method, data categories "
            "(product ids or tags) and expiry. Withdrawing takes effect for the next "
            "decision, stops running transfers, and revokes the agreements resting on the "
            "consent, so the recipient's connector deletes the data."
        ),
    )
    cs = co.add_subparsers(dest="consent_command", required=True, metavar="COMMAND")

    grant = cs.add_parser("grant", help="consent to a recipient processing your data")
    grant.add_argument("--config", required=True, type=Path, help="your connector's config")
    grant.add_argument("--recipient", required=True, help="participant id of the recipient")
    grant.add_argument("--purposes", required=True, help="comma-separated purposes")
    grant.add_argument("--method", required=True, help="how the recipient may process the data")
    grant.add_argument(
        "--categories",
        required=True,
        help="comma-separated product ids or tags of your products the consent covers",
    )
    grant.add_argument("--expires", required=True, help="expiry date (YYYY-MM-DD or ISO time, UTC)")
    grant.add_argument("--json", action="store_true", help=JSON_HELP)
    grant.set_defaults(func=run_grant)

    withdraw = cs.add_parser("withdraw", help="withdraw a consent")
    withdraw.add_argument("consent", help="consent id (from 'tds consent list')")
    withdraw.add_argument("--config", required=True, type=Path, help="your connector's config")
    withdraw.add_argument("--reason", default="", help="why (recorded in your log)")
    withdraw.add_argument("--json", action="store_true", help=JSON_HELP)
    withdraw.set_defaults(func=run_withdraw)

    ls = cs.add_parser("list", help="consents you have given")
    ls.add_argument("--config", required=True, type=Path, help="your connector's config")
    ls.add_argument("--recipient", default="", help="only consents given to this participant")
    ls.add_argument("--active", action="store_true", help="hide withdrawn and expired consents")
    ls.add_argument("--json", action="store_true", help=JSON_HELP)
    ls.set_defaults(func=run_list)


def _admin(args: argparse.Namespace) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(admin_channel(load_config(args.config)))


def consent_state(c: admin_pb2.ConsentInfo, now_ns: int) -> str:
    """``withdrawn``, ``expired`` (at ``now_ns``) or ``in force``."""
    if c.withdrawn:
        return "withdrawn"
    return "expired" if c.expires_ns <= now_ns else "in force"


def consent_json(c: admin_pb2.ConsentInfo, now_ns: int) -> dict[str, Any]:
    """A consent for ``--json``, with its state at ``now_ns``."""
    return {
        "id": c.id,
        "state": consent_state(c, now_ns),
        "recipient": c.recipient,
        "purposes": list(c.purposes),
        "method": c.method,
        "categories": list(c.categories),
        "expires": utc_text(c.expires_ns, "%Y-%m-%d %H:%M UTC"),
        "expires_ns": c.expires_ns,
        "withdrawn": c.withdrawn,
        "revoked_agreements": list(c.revoked_agreements),
        "signed": c.signed,
        "withdrawal": c.withdrawal,
    }


def describe(c: admin_pb2.ConsentInfo, now_ns: int) -> str:
    """One line per consent, with its state at ``now_ns``."""
    expires = utc_text(c.expires_ns, "%Y-%m-%d %H:%M UTC")
    state = {
        "withdrawn": "WITHDRAWN",
        # An expired consent releases nothing: the decision refuses it (consent_expired).
        "expired": f"EXPIRED on {expires}",
        "in force": f"in force until {expires}",
    }[consent_state(c, now_ns)]
    return (
        f"{c.id}  to {c.recipient:<12} purposes={','.join(c.purposes)} "
        f"categories={','.join(c.categories)} method={c.method!r}  {state}"
    )


def _split(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def consent_request(
    recipient: str, purposes: str, method: str, categories: str, expires: str, name: str
) -> admin_pb2.GrantConsentRequest:
    """A consent as a person writes it (comma-separated purposes and categories, the
    expiry as YYYY-MM-DD or an ISO time, UTC; ``name`` is what the expiry is called in an
    error): ``tds consent grant`` and the console's form."""
    return admin_pb2.GrantConsentRequest(
        recipient=recipient,
        purposes=_split(purposes),
        method=method,
        categories=_split(categories),
        expires_ns=parse_date_ns(expires, name),
    )


def run_grant(args: argparse.Namespace) -> int:
    """Give consent."""
    request = consent_request(
        args.recipient, args.purposes, args.method, args.categories, args.expires, "--expires"
    )
    with calling("your connector"):
        c = _admin(args).GrantConsent(request, timeout=10)
    now_ns = time.time_ns()
    emit(consent_json(c, now_ns), f"Consent given: {describe(c, now_ns)}", as_json=args.json)
    return 0


def run_withdraw(args: argparse.Namespace) -> int:
    """Withdraw consent."""
    with calling("your connector"):
        c = _admin(args).WithdrawConsent(
            admin_pb2.WithdrawConsentRequest(consent_id=args.consent, reason=args.reason),
            timeout=30,
        )
    revoked = ", ".join(c.revoked_agreements) or "none"
    emit(
        consent_json(c, time.time_ns()),
        f"Consent {c.id} withdrawn; agreements revoked (the recipient is told to delete): "
        f"{revoked}",
        as_json=args.json,
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    """List consents."""
    with calling("your connector"):
        resp = _admin(args).ListConsents(
            admin_pb2.ListConsentsRequest(
                recipient=args.recipient, include_withdrawn=not args.active
            ),
            timeout=10,
        )
    now_ns = time.time_ns()
    shown = [c for c in resp.consents if not args.active or c.expires_ns > now_ns]
    emit(
        [consent_json(c, now_ns) for c in shown],
        "\n".join(describe(c, now_ns) for c in shown) or "(no consents)",
        as_json=args.json,
    )
    return 0

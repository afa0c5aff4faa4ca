"""``tds pki``: development key material for a whole space."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from connector.cli.output import emit
from connector.identity.pki import init_space, parse_participant_spec


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds pki``."""
    pki = sub.add_parser("pki", help="development PKI (CA, participants, admin certificates)")
    pki_sub = pki.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")
    init = pki_sub.add_parser(
        "init",
        help="create a space's CA, operator and participants",
        description="Create the data-space CA, the operator identity and, per participant, a "
        "TLS key and certificate (ECDSA P-256, SAN URI urn:tds:SPACE:participant:ID), an "
        "Ed25519 signing key and an admin client certificate. DEVELOPMENT ONLY: the CA key "
        "is written next to everything else.",
    )
    init.add_argument("--space", required=True, help="data-space id, e.g. city")
    init.add_argument("--out", required=True, type=Path, help="directory to write into")
    init.add_argument(
        "--participant",
        action="append",
        default=[],
        metavar="ID:ROLE",
        help="a participant to create (repeatable), e.g. gov:government",
    )
    init.add_argument("--operator-id", default="operator", help="the operator's id")
    init.add_argument("--days", type=int, default=365, help="certificate validity in days")
    init.add_argument("--force", action="store_true", help="replace an existing PKI in --out")
    init.add_argument("--json", action="store_true", help="print a manifest of every file")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    """Write the PKI and report what was written."""
    specs = [parse_participant_spec(s) for s in args.participant]
    manifest = init_space(
        args.out, args.space, specs, operator_id=args.operator_id, days=args.days, force=args.force
    )
    out = args.out.resolve()
    data = asdict(manifest)
    data["directory"] = str(out)
    for p in data["participants"]:
        for key in (
            "tls_cert",
            "tls_key",
            "signing_key",
            "signing_public_key",
            "admin_cert",
            "admin_key",
        ):
            p[key] = str(out / p[key])
    data["ca_cert"], data["ca_key"] = str(out / manifest.ca_cert), str(out / manifest.ca_key)
    lines = [
        f"Wrote a development PKI for space {manifest.space!r} to {out}",
        f"  CA certificate: {data['ca_cert']}",
    ]
    lines += [f"  {p.id:<12} {p.role:<11} {p.uri}" for p in manifest.participants]
    lines.append(
        "Development only: keep real CA keys offline. Next: tds init --pki "
        f"{args.out} --participant ID --listen HOST:PORT ..."
    )
    emit(data, "\n".join(lines), as_json=args.json)
    return 0

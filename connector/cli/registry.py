"""``tds registry``: the operator's administration of the directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from connector._proto.tds.v1 import registry_pb2, registry_pb2_grpc
from connector.cli.output import JSON_HELP, emit, parse_date_ns, utc_text
from connector.config import Config, load_config
from connector.errors import ConfigError, InvalidRequest
from connector.identity.certs import load_ed25519_public_key, raw_public_key, read_file_bytes
from connector.identity.pki import load_manifest
from connector.node.clients import admin_channel, registry_client
from connector.registry.client import PeerInfo
from connector.registry.directory import CertificateExpiry
from connector.rpc.channel import calling


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds registry``."""
    reg = sub.add_parser("registry", help="enrol, revoke and list participants (operator)")
    rs = reg.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")

    enrol = rs.add_parser("enrol", help="add a participant to the directory (operator admin)")
    enrol.add_argument("--config", required=True, type=Path, help="the operator's config")
    enrol.add_argument("--participant", required=True, help="participant id")
    enrol.add_argument("--address", default="", help="host:port of its connector")
    enrol.add_argument(
        "--pki",
        type=Path,
        help="take role, certificate and signing key from this 'tds pki init' dir",
    )
    enrol.add_argument("--role", help="role (default: from --pki)")
    enrol.add_argument("--tls-cert", type=Path, help="its TLS certificate (PEM)")
    enrol.add_argument("--signing-public-key", type=Path, help="its Ed25519 public key (PEM)")
    enrol.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an attribute for its membership tokens (repeatable)",
    )
    enrol.add_argument("--replace", action="store_true", help="update an existing entry")
    enrol.add_argument("--json", action="store_true", help=JSON_HELP)
    enrol.set_defaults(func=run_enrol)

    revoke = rs.add_parser(
        "revoke", help="revoke a participant, or one operation grant (operator admin)"
    )
    revoke.add_argument("--config", required=True, type=Path, help="the operator's config")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--participant", help="revoke this participant's membership")
    which.add_argument("--grant", help="revoke this authorised-operation grant only")
    revoke.add_argument(
        "--reason", required=True, help="why; the registry records it with the revocation"
    )
    revoke.add_argument("--json", action="store_true", help=JSON_HELP)
    revoke.set_defaults(func=run_revoke)

    grant = rs.add_parser(
        "grant",
        help="grant a participant authorised operation of public data (operator admin)",
        description=(
            "Grant a participant the right to operate public data (公共数据授权运营) within "
            "a scope of product tags or domains, for named purposes, for a term of at most "
            "five years. The grant is signed by the operator and carried in the "
            "participant's membership tokens; 'tds status --refresh' on its connector "
            "picks it up at once."
        ),
    )
    grant.add_argument("--config", required=True, type=Path, help="the operator's config")
    grant.add_argument(
        "--participant", required=True, help="the operator to authorise (participant id)"
    )
    grant.add_argument(
        "--scope", required=True, help="comma-separated product tags or domains it covers"
    )
    grant.add_argument("--purposes", required=True, help="comma-separated purposes it allows")
    grant.add_argument("--start", default="", help="start date (YYYY-MM-DD, UTC; default now)")
    grant.add_argument("--end", required=True, help="end date (YYYY-MM-DD, UTC; <= 5 years)")
    grant.add_argument("--body", required=True, help="the granting body")
    grant.add_argument("--json", action="store_true", help=JSON_HELP)
    grant.set_defaults(func=run_grant)

    grants = rs.add_parser("grants", help="list authorised-operation grants (any member)")
    grants.add_argument("--config", required=True, type=Path, help="your connector's config")
    grants.add_argument("--participant", default="", help="only this participant's grants")
    grants.add_argument("--all", action="store_true", help="include revoked grants")
    grants.add_argument("--json", action="store_true", help=JSON_HELP)
    grants.set_defaults(func=run_grants)

    ls = rs.add_parser("list", help="list the directory (any member)")
    ls.add_argument("--config", required=True, type=Path, help="your connector's config")
    ls.add_argument("--role", default="", help="only participants with this role")
    ls.add_argument("--json", action="store_true", help=JSON_HELP)
    ls.set_defaults(func=run_list)


def _enrol_request(args: argparse.Namespace) -> registry_pb2.EnrolRequest:
    role, cert_path, key_path = args.role, args.tls_cert, args.signing_public_key
    if args.pki:
        pki_dir = args.pki.resolve()
        me = load_manifest(pki_dir).participant(args.participant)
        role = role or me.role
        cert_path = cert_path or pki_dir / me.tls_cert
        key_path = key_path or pki_dir / me.signing_public_key
    if not (role and cert_path and key_path):
        raise ConfigError("give --pki, or all of --role, --tls-cert and --signing-public-key")
    attrs = {}
    for item in args.attr:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"--attr {item!r}: expected KEY=VALUE")
        attrs[key] = value
    return registry_pb2.EnrolRequest(
        participant_id=args.participant,
        role=role,
        address=args.address,
        tls_certificate_pem=read_file_bytes(cert_path, "--tls-cert").decode(),
        signing_public_key=raw_public_key(
            load_ed25519_public_key(key_path, "--signing-public-key")
        ),
        attributes=attrs,
        replace=args.replace,
    )


def _certificate_text(p: PeerInfo, now_ms: int) -> str:
    """When the enrolled certificate expires, flagged when that is within 30 days or past."""
    expiry = p.certificate_expiry(now_ms)
    if expiry is CertificateExpiry.UNKNOWN:
        return "cert expiry unknown"
    text = f"cert until {utc_text(p.certificate_not_after_ms * 10**6)}"
    if expiry is CertificateExpiry.EXPIRED:
        return f"{text} EXPIRED"
    if expiry is CertificateExpiry.EXPIRING:
        days = (p.certificate_not_after_ms - now_ms) // 86_400_000
        return f"{text} EXPIRES IN {days} d"
    return text


def _describe(p: PeerInfo) -> str:
    state = "REVOKED" if p.revoked else "active"
    cert = _certificate_text(p, time.time_ns() // 10**6)
    return f"{p.id:<14} {p.role:<11} {p.address or '-':<22} {state:<7} {cert}"


def run_enrol(args: argparse.Namespace) -> int:
    """Enrol with the operator's admin certificate."""
    cfg = load_config(args.config)
    request = _enrol_request(args)
    with admin_channel(cfg) as channel, calling("registry"):
        resp = registry_pb2_grpc.RegistryServiceStub(channel).Enrol(request, timeout=10)
    info = PeerInfo.from_message(resp.participant)
    emit(_peer_json(info), f"Enrolled {_describe(info)}", as_json=args.json)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Revoke with the operator's admin certificate."""
    cfg = load_config(args.config)
    if args.grant:
        g = revoke_grant(cfg, args.grant, args.reason)
        emit(
            grant_json(g),
            f"Revoked grant {g.id} of {g.participant_id}; its next membership token no "
            "longer carries it",
            as_json=args.json,
        )
        return 0
    with admin_channel(cfg) as channel, calling("registry"):
        resp = registry_pb2_grpc.RegistryServiceStub(channel).Revoke(
            registry_pb2.RevokeRequest(participant_id=args.participant, reason=args.reason),
            timeout=10,
        )
    emit(
        {"participant": args.participant, "revocation_list_serial": resp.revocation_list_serial},
        f"Revoked {args.participant}; revocation list serial {resp.revocation_list_serial}",
        as_json=args.json,
    )
    return 0


_ISO = "%Y-%m-%dT%H:%M:%SZ"


def _peer_json(p: PeerInfo) -> dict[str, object]:
    return {
        "id": p.id,
        "role": p.role,
        "address": p.address,
        "revoked": p.revoked,
        "signing_public_key": p.signing_public_key.hex(),
        "certificate_thumbprint": p.certificate_thumbprint,
        "enrolled_at": p.enrolled_at,
        "attributes": p.attributes,
        "certificate_not_after": utc_text(p.certificate_not_after_ms * 10**6, _ISO)
        if p.certificate_not_after_ms
        else "",
        "certificate_not_after_ms": p.certificate_not_after_ms,
        "certificate_expiry": p.certificate_expiry(time.time_ns() // 10**6).value,
    }


def run_list(args: argparse.Namespace) -> int:
    """List the directory as a member."""
    cfg = load_config(args.config)
    client = registry_client(cfg)
    try:
        peers = client.list_participants(args.role)
    finally:
        client.close()
    emit(
        [_peer_json(p) for p in peers],
        "\n".join(_describe(p) for p in peers) or "(none)",
        as_json=args.json,
    )
    return 0


def grant_json(g: registry_pb2.OperationGrant) -> dict[str, object]:
    """A grant for ``--json`` output."""
    return {
        "id": g.id,
        "participant": g.participant_id,
        "scope": list(g.scope),
        "purposes": list(g.purposes),
        "start": utc_text(g.start_ns),
        "end": utc_text(g.end_ns),
        "start_ns": g.start_ns,
        "end_ns": g.end_ns,
        "body": g.body,
        "revoked": g.revoked,
        "revoked_reason": g.revoked_reason,
        "signed": g.signed,
    }


def describe_grant(g: registry_pb2.OperationGrant) -> str:
    """One line per grant."""
    state = f"REVOKED ({g.revoked_reason})" if g.revoked else "active"
    return (
        f"{g.id}  {g.participant_id:<12} scope={','.join(g.scope)} "
        f"purposes={','.join(g.purposes)} {utc_text(g.start_ns)}..{utc_text(g.end_ns)} "
        f"by {g.body!r}  {state}"
    )


_COMMAS = str.maketrans({"\uff0c": ",", "\u3001": ","})
"""The full-width comma and the ideographic enumeration comma a Chinese keyboard types."""


def listed(text: str) -> list[str]:
    """Comma-separated values (Chinese commas too), each stripped, empty ones dropped."""
    return [v.strip() for v in text.translate(_COMMAS).split(",") if v.strip()]


def grant_operation(
    cfg: Config,
    participant: str,
    scope: str,
    purposes: str,
    *,
    start: str,
    end: str,
    body: str,
    names: tuple[str, str] = ("--start", "--end"),
) -> registry_pb2.OperationGrant:
    """Grant authorised operation with the operator's admin certificate, from text as a
    person writes it (comma-separated scope and purposes, dates as YYYY-MM-DD in UTC; no
    start is now); ``names``: what the start and end are called in errors. The registry
    checks the rest (who may operate, a term of at most five years)."""
    request = registry_pb2.GrantOperationRequest(
        participant_id=participant,
        scope=listed(scope),
        purposes=listed(purposes),
        start_ns=parse_date_ns(start, names[0]) if start else time.time_ns(),
        end_ns=parse_date_ns(end, names[1]),
        body=body.strip(),
    )
    with admin_channel(cfg) as channel, calling("registry"):
        return registry_pb2_grpc.RegistryServiceStub(channel).GrantOperation(request, timeout=10)


def revoke_grant(cfg: Config, grant_id: str, reason: str) -> registry_pb2.OperationGrant:
    """Revoke a grant with the operator's admin certificate; the grant as revoked."""
    with admin_channel(cfg) as channel, calling("registry"):
        return registry_pb2_grpc.RegistryServiceStub(channel).RevokeGrant(
            registry_pb2.RevokeGrantRequest(grant_id=grant_id, reason=reason), timeout=10
        )


def run_grant(args: argparse.Namespace) -> int:
    """Grant authorised operation with the operator's admin certificate."""
    g = grant_operation(
        load_config(args.config),
        args.participant,
        args.scope,
        args.purposes,
        start=args.start or "",
        end=args.end,
        body=args.body,
    )
    emit(grant_json(g), f"Granted {describe_grant(g)}", as_json=args.json)
    return 0


def run_grants(args: argparse.Namespace) -> int:
    """List grants as a member."""
    cfg = load_config(args.config)
    client = registry_client(cfg)
    try:
        found = client.list_grants(args.participant, include_revoked=args.all)
    finally:
        client.close()
    emit(
        [grant_json(g) for g in found],
        "\n".join(describe_grant(g) for g in found) or "(no grants)",
        as_json=args.json,
    )
    return 0

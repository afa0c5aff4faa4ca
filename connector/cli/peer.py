"""``tds ping`` and ``tds status``: reach another member, or one's own connector."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc, peer_pb2, peer_pb2_grpc
from connector.cli.output import JSON_HELP, emit
from connector.config import load_config
from connector.errors import PreconditionFailed
from connector.node.clients import admin_channel, member_channel, registry_client
from connector.rpc.channel import calling


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds ping`` and ``tds status``."""
    ping = sub.add_parser(
        "ping",
        help="look a member up in the registry and call it over mTLS",
        description="Resolve PARTICIPANT through the registry, call its PeerService over "
        "mutual TLS with your membership token, and show who it says you are.",
    )
    ping.add_argument("participant", help="the member to call")
    ping.add_argument("--config", required=True, type=Path, help="your connector's config")
    ping.add_argument("--json", action="store_true", help=JSON_HELP)
    ping.set_defaults(func=run_ping)

    status = sub.add_parser("status", help="your own connector's state (admin certificate)")
    status.add_argument("--config", required=True, type=Path, help="your connector's config")
    status.add_argument(
        "--refresh",
        action="store_true",
        help="fetch a new membership token and revocation list first (after a grant)",
    )
    status.add_argument("--json", action="store_true", help=JSON_HELP)
    status.set_defaults(func=run_status)


def run_ping(args: argparse.Namespace) -> int:
    """Look up and ping a member."""
    cfg = load_config(args.config)
    registry = registry_client(cfg)
    try:
        peer = registry.lookup(args.participant)
        if peer.revoked:
            raise PreconditionFailed(f"{peer.id} is revoked; it cannot be called")
        if not peer.address:
            raise PreconditionFailed(f"{peer.id} ({peer.role}) runs no connector")
        with member_channel(cfg, registry, peer.id, peer.address) as channel, calling(peer.id):
            resp = peer_pb2_grpc.PeerServiceStub(channel).Ping(peer_pb2.PingRequest(), timeout=10)
    finally:
        registry.close()
    data = {
        "responder_id": resp.responder_id,
        "responder_role": resp.responder_role,
        "caller_id": resp.caller_id,
        "caller_role": resp.caller_role,
        "address": peer.address,
    }
    emit(
        data,
        f"{resp.responder_id} ({resp.responder_role}) at {peer.address} answered; it "
        f"verified you as {resp.caller_id} ({resp.caller_role})",
        as_json=args.json,
    )
    return 0


def run_status(args: argparse.Namespace) -> int:
    """Show the connector's own status."""
    cfg = load_config(args.config)
    with admin_channel(cfg) as channel, calling(cfg.participant.id):
        s = admin_pb2_grpc.AdminServiceStub(channel).GetStatus(
            admin_pb2.GetStatusRequest(refresh=args.refresh), timeout=10
        )
    data = {
        "participant_id": s.participant_id,
        "role": s.role,
        "space": s.space,
        "token_expires_at": s.token_expires_at,
        "revocation_list_serial": s.revocation_list_serial,
        "revocation_list_issued_at": s.revocation_list_issued_at,
        # The signed directory peers are looked up in, and how long it may serve while
        # the registry does not answer (calls to other members stop after that).
        "directory_issued_at": s.directory_issued_at,
        "directory_age_seconds": (
            max(0, int(time.time()) - s.directory_issued_at) if s.directory_issued_at else None
        ),
        "directory_max_age_seconds": s.directory_max_age_seconds,
        "registry_error": s.registry_error,
        "version": s.version,
    }
    human = "\n".join(f"{k:<26} {v}" for k, v in data.items())
    emit(data, human, as_json=args.json)
    return 0

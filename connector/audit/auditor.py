"""What an auditor (or any member) does online: witness a log, then export it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import audit_pb2_grpc
from connector.audit.checkpoint import log_origin
from connector.audit.export import fetch_log
from connector.audit.note import Verifier
from connector.audit.witness import FileWitnessState, Witness
from connector.clock import SystemClock
from connector.config import Config
from connector.errors import NotFound
from connector.identity.certs import load_ed25519_private_key
from connector.node.clients import member_channel, registry_client
from connector.rpc.channel import calling

__all__ = ["fetch_and_witness"]


def fetch_and_witness(
    cfg: Config,
    connector: str,
    out: Path,
    *,
    cosign: bool = True,
    progress: Callable[[int, int], None] | None = None,
    narrate: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Cosign ``connector``'s newest checkpoint (if ``cosign``), then export its log to ``out``.

    ``connector`` is a participant id, optionally ``ID@HOST:PORT`` to skip the address
    lookup. Witness state lives in ``<data_dir>/witness``. A revoked participant's log is
    fetched without cosigning (its connector takes no more signatures), and must extend
    the checkpoint last cosigned for it.
    """
    target, _, address = connector.partition("@")
    registry = registry_client(cfg)
    try:
        peers = registry.list_participants()
        directory: dict[str, dict[str, Any]] = {
            p.id: {
                "role": p.role,
                "signing_public_key": p.signing_public_key.hex(),
                **({"revoked": True} if p.revoked else {}),
            }
            for p in peers
        }
        if target not in directory:
            raise NotFound(f"{target} is not in the directory")
        revoked = bool(directory[target].get("revoked"))
        address = address or next(p.address for p in peers if p.id == target)
        if not address:
            raise NotFound(f"{target} runs no connector")
        log_key = Verifier.ed25519(
            log_origin(cfg.participant.space, target),
            ed25519.Ed25519PublicKey.from_public_bytes(
                bytes.fromhex(directory[target]["signing_public_key"])
            ),
        )
        witness = Witness(
            log_origin(cfg.participant.space, cfg.participant.id),
            load_ed25519_private_key(cfg.pki.signing_key, "pki.signing_key"),
            FileWitnessState(cfg.data_dir / "witness"),
            SystemClock(),
        )
        with member_channel(cfg, registry, target, address) as channel, calling(target):
            stub = audit_pb2_grpc.AuditServiceStub(channel)
            cosigned = 0
            if cosign and not revoked:
                result = witness.cosign_log(stub, log_key)
                cosigned = result.checkpoint.size
                if narrate:
                    narrate(
                        f"Cosigned {target}'s checkpoint at size {cosigned} (consistent "
                        f"with size {result.previous_size} seen before)"
                    )
            seen = witness.last_seen(log_key)
            manifest = fetch_log(
                stub,
                out,
                participant=target,
                space=cfg.participant.space,
                fetched_by=cfg.participant.id,
                directory=directory,
                progress=progress,
                extends=seen.checkpoint if seen else None,
            )
            if revoked and narrate:
                since = f" (size {seen.checkpoint.size})" if seen else ""
                narrate(
                    f"{target} has been revoked: its log was not cosigned"
                    + (f"; it extends the checkpoint you last cosigned{since}" if seen else "")
                )
    finally:
        registry.close()
    manifest["cosigned_size"] = cosigned
    return manifest

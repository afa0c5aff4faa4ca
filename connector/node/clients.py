"""Clients a participant uses: to the registry, to other members, to its own connector."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from connector.clock import SystemClock
from connector.config import Config
from connector.errors import ConfigError
from connector.identity.certs import load_ed25519_public_key
from connector.identity.names import participant_uri
from connector.rpc.channel import TlsIdentity, open_channel

if TYPE_CHECKING:
    from connector.registry.client import RegistryClient

__all__ = ["admin_channel", "member_channel", "registry_client"]


def _participant_tls(cfg: Config) -> TlsIdentity:
    return TlsIdentity.load(cfg.pki.ca_cert, cfg.pki.tls_cert, cfg.pki.tls_key)


def registry_address(cfg: Config) -> str:
    """The registry's address (the operator's own listen address for the operator)."""
    return cfg.server.listen if cfg.is_operator else cfg.registry.address


def registry_client(cfg: Config) -> RegistryClient:
    """A registry client acting as the configured participant."""
    # Here, not at the top: the registry client brings PyJWT (its directory is a JWT),
    # which commands that talk to their own connector only do not need.
    from connector.registry.client import RegistryClient

    return RegistryClient(
        address=registry_address(cfg),
        space=cfg.participant.space,
        operator_id=cfg.registry.operator_id,
        issuer=participant_uri(cfg.participant.space, cfg.registry.operator_id),
        tls=_participant_tls(cfg),
        operator_key=load_ed25519_public_key(
            cfg.pki.operator_public_key, "pki.operator_public_key"
        ),
        clock=SystemClock(),
        call_timeout_seconds=cfg.registry.call_timeout_seconds,
    )


def member_channel(cfg: Config, registry: RegistryClient, peer: str, address: str) -> grpc.Channel:
    """A channel to another member, carrying this participant's membership token."""
    return open_channel(
        address, _participant_tls(cfg), space=cfg.participant.space, peer=peer, token=registry.token
    )


def admin_channel(cfg: Config, address: str | None = None) -> grpc.Channel:
    """A channel to this participant's own connector with its administrator certificate."""
    if cfg.pki.admin_cert is None or cfg.pki.admin_key is None:
        raise ConfigError("pki.admin_cert and pki.admin_key are needed for admin commands")
    tls = TlsIdentity.load(cfg.pki.ca_cert, cfg.pki.admin_cert, cfg.pki.admin_key)
    return open_channel(
        address or cfg.server.listen, tls, space=cfg.participant.space, peer=cfg.participant.id
    )

"""A whole data space on one machine: PKI, registry and connectors on loopback.

Used by ``tds demo`` and by the integration tests; everything runs for real (mutual TLS,
tokens, SQLite files) with ports chosen by the operating system.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from connector._proto.tds.v1 import registry_pb2, registry_pb2_grpc
from connector.cli.init import build_config
from connector.clock import Clock
from connector.config import (
    Config,
    DspConfig,
    PolicyConfig,
    RegistryConfig,
    StreamConfig,
    load_config,
    render_config,
)
from connector.errors import ConnectorError
from connector.identity.certs import load_ed25519_public_key, raw_public_key, read_file_bytes
from connector.identity.names import Role
from connector.identity.pki import SpaceManifest, init_space
from connector.node import Node
from connector.node.clients import admin_channel
from connector.rpc.channel import calling
from connector.sources.connections import SourceConnection

__all__ = ["LocalSpace"]


@dataclass
class LocalSpace:
    """A running space under ``root``: the registry plus one node per connector."""

    root: Path
    space: str
    manifest: SpaceManifest
    configs: dict[str, Config] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def pki_dir(self) -> Path:
        """Where the PKI lives."""
        return self.root / "pki"

    @classmethod
    def create(
        cls, root: Path, participants: Sequence[tuple[str, Role]], *, space: str = "city"
    ) -> LocalSpace:
        """Write the PKI and the operator's config (nothing started yet)."""
        root.mkdir(parents=True, exist_ok=True)
        manifest = init_space(root / "pki", space, participants)
        return cls(root=root, space=space, manifest=manifest)

    def write_config(
        self,
        participant: str,
        listen: str,
        registry: str,
        database_url: str = "",
        policy: PolicyConfig | None = None,
        registry_settings: RegistryConfig | None = None,
        sources: Mapping[str, SourceConnection] | None = None,
        dsp: DspConfig | None = None,
        stream: StreamConfig | None = None,
    ) -> Config:
        """Write ``ROOT/ID.toml`` as ``tds init`` would (with ``policy``, the registry
        settings and ``[sources]`` if given; the registry's address stays ``registry``),
        load it."""
        out = self.root / f"{participant}.toml"
        args = argparse.Namespace(
            pki=self.pki_dir,
            participant=participant,
            listen=listen,
            registry=registry,
            data_dir=None,
            database_url=database_url,
            # Everything of a local space lives under its root: its sources may too.
            source_root=[self.root],
        )
        cfg = build_config(args, out)
        if policy is not None:
            cfg = dataclasses.replace(cfg, policy=policy)
        if registry_settings is not None:
            cfg = dataclasses.replace(
                cfg,
                registry=dataclasses.replace(
                    registry_settings, address=registry, operator_id=cfg.registry.operator_id
                ),
            )
        if sources is not None:
            cfg = dataclasses.replace(cfg, sources=dict(sources))
        if dsp is not None:
            cfg = dataclasses.replace(cfg, dsp=dsp)
        if stream is not None:
            cfg = dataclasses.replace(cfg, stream=stream)
        out.write_text(render_config(cfg))
        cfg = load_config(out)
        self.configs[participant] = cfg
        return cfg

    def start_registry(self, *, database_url: str = "") -> Node:
        """Start the operator's registry on a free loopback port (on ``database_url``, or
        SQLite in its data directory)."""
        op = self.manifest.operator_id
        self.write_config(op, "127.0.0.1:0", "", database_url)
        node = Node(self.configs[op])
        node.start()
        # Rewrite with the bound port, so the config on disk is the one a person would use.
        cfg = self.write_config(op, f"127.0.0.1:{node.port}", "", database_url)
        node.cfg = cfg
        self.nodes[op] = node
        return node

    @property
    def registry_address(self) -> str:
        """host:port of the running registry."""
        return f"127.0.0.1:{self.nodes[self.manifest.operator_id].port}"

    def enrol(
        self,
        participant: str,
        address: str,
        attributes: dict[str, str] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Enrol a participant with the operator's administrator certificate."""
        me = self.manifest.participant(participant)
        request = registry_pb2.EnrolRequest(
            participant_id=participant,
            role=me.role,
            address=address,
            tls_certificate_pem=read_file_bytes(self.pki_dir / me.tls_cert, "cert").decode(),
            signing_public_key=raw_public_key(
                load_ed25519_public_key(self.pki_dir / me.signing_public_key)
            ),
            attributes=attributes or {},
            replace=replace,
        )
        op_cfg = self.configs[self.manifest.operator_id]
        with admin_channel(op_cfg) as channel, calling("registry"):
            registry_pb2_grpc.RegistryServiceStub(channel).Enrol(request, timeout=10)

    def start_connector(
        self,
        participant: str,
        *,
        wait_ready: float = 10.0,
        database_url: str = "",
        policy: PolicyConfig | None = None,
        registry_settings: RegistryConfig | None = None,
        clock: Clock | None = None,
        sources: Mapping[str, SourceConnection] | None = None,
        dsp: DspConfig | None = None,
        stream: StreamConfig | None = None,
    ) -> Node:
        """Start a participant's connector, enrol it, and wait for its token and list
        (with ``dsp``, serving the Dataspace Protocol binding as configured there)."""
        where = (
            self.registry_address,
            database_url,
            policy,
            registry_settings,
            sources,
            dsp,
            stream,
        )
        cfg = self.write_config(participant, "127.0.0.1:0", *where)
        node = Node(cfg, clock=clock)
        node.start()
        address = f"127.0.0.1:{node.port}"
        node.cfg = self.write_config(participant, address, *where)
        self.enrol(participant, address)
        self.nodes[participant] = node
        if node.registry is not None:
            # It asked the registry for a token before it was enrolled (its port was not
            # known yet) and would ask again only a second later: ask now.
            node.registry.refresh_all()
        if not node.wait_ready(wait_ready):
            raise TimeoutError(f"{participant} did not obtain a token and revocation list")
        return node

    def revoke(self, participant: str, reason: str) -> None:
        """Revoke a participant as the operator's administrator."""
        op_cfg = self.configs[self.manifest.operator_id]
        with admin_channel(op_cfg) as channel, calling("registry"):
            registry_pb2_grpc.RegistryServiceStub(channel).Revoke(
                registry_pb2.RevokeRequest(participant_id=participant, reason=reason), timeout=10
            )

    def grant(
        self,
        participant: str,
        *,
        scope: list[str],
        purposes: list[str],
        start_ns: int,
        end_ns: int,
        body: str,
    ) -> registry_pb2.OperationGrant:
        """Grant authorised operation of public data as the operator's administrator."""
        op_cfg = self.configs[self.manifest.operator_id]
        with admin_channel(op_cfg) as channel, calling("registry"):
            return registry_pb2_grpc.RegistryServiceStub(channel).GrantOperation(
                registry_pb2.GrantOperationRequest(
                    participant_id=participant,
                    scope=scope,
                    purposes=purposes,
                    start_ns=start_ns,
                    end_ns=end_ns,
                    body=body,
                ),
                timeout=10,
            )

    def revoke_grant(self, grant_id: str, reason: str) -> registry_pb2.OperationGrant:
        """Revoke a grant as the operator's administrator."""
        op_cfg = self.configs[self.manifest.operator_id]
        with admin_channel(op_cfg) as channel, calling("registry"):
            return registry_pb2_grpc.RegistryServiceStub(channel).RevokeGrant(
                registry_pb2.RevokeGrantRequest(grant_id=grant_id, reason=reason), timeout=10
            )

    def refresh(self) -> None:
        """Make every connector fetch the revocation list and a new token now (a revoked
        participant gets no token: it keeps the one it has, which others refuse)."""
        for node in self.nodes.values():
            if node.registry is not None:
                node.registry.refresh_all()
                with contextlib.suppress(ConnectorError):
                    node.registry.refresh_token()

    def stop(self) -> None:
        """Stop every node, connectors first."""
        op = self.manifest.operator_id
        for pid, node in list(self.nodes.items()):
            if pid != op:
                node.stop(grace=1)
        if op in self.nodes:
            self.nodes[op].stop(grace=1)
        self.nodes.clear()

    def __enter__(self) -> LocalSpace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rpc_code(err: grpc.RpcError) -> str:
    """The status name of a failed call, for reports."""
    code = err.code() if hasattr(err, "code") else None
    return code.name if code is not None else "UNKNOWN"

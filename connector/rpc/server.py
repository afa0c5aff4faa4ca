"""Assembling a gRPC server: mutual TLS, the auth interceptor, health and reflection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from connector.errors import ConfigError
from connector.rpc.auth import Access, Authenticator, AuthInterceptor
from connector.rpc.channel import RECEIVE_WINDOW_OPTIONS
from connector.rpc.requests import RequestCheckInterceptor

__all__ = ["ServerHandle", "Service", "build_server"]


@dataclass(frozen=True)
class Service:
    """One gRPC service to serve and who may call each of its methods."""

    name: str
    """Full service name, e.g. ``tds.v1.RegistryService``."""
    add: Callable[[Any, grpc.Server], None]
    """The generated ``add_*Servicer_to_server`` function."""
    servicer: Any
    access: dict[str, Access] = field(default_factory=dict)
    """Access level per method name (short name, e.g. ``Lookup``)."""


@dataclass
class ServerHandle:
    """A started server and the port it is bound to."""

    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float) -> None:
        """Stop accepting calls, let in-flight calls run for ``grace`` seconds, then end."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def build_server(
    *,
    listen: str,
    services: Sequence[Service],
    authenticator: Authenticator,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    max_workers: int,
    max_message_bytes: int,
) -> ServerHandle:
    """Build, bind and start a server; ``ConfigError`` when the address cannot be bound."""
    access = {
        f"/{svc.name}/{method}": level for svc in services for method, level in svc.access.items()
    }
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tds-rpc"),
        # Authentication first (outermost), then the request checks: a caller learns that
        # its request is malformed only once it is known.
        interceptors=[AuthInterceptor(authenticator, access), RequestCheckInterceptor()],
        options=[
            # Without this, a second server could silently share the port.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *RECEIVE_WINDOW_OPTIONS,  # pushed transfers arrive here
        ],
    )
    for svc in services:
        svc.add(svc.servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [svc.name for svc in services]
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        creds = grpc.ssl_server_credentials(
            [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
        )
    except Exception as exc:
        raise ConfigError(f"TLS material is unusable for a server: {exc}") from None
    try:
        port = server.add_secure_port(listen, creds)
    except RuntimeError:
        port = 0
    wanted = listen.rpartition(":")[2]
    if port == 0 or (wanted != "0" and str(port) != wanted):
        raise ConfigError(
            f"cannot listen on {listen}: the port is in use or the address is not on this host"
        )
    server.start()
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return ServerHandle(server=server, port=port, health=health_servicer)

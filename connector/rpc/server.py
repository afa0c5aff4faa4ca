"""Assembling a gRPC server: mutual TLS, the auth interceptor, health and reflection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from connector.errors import ConfigError
from connector.rpc.auth import Access, Authenticator, AuthInterceptor
from connector.rpc.channel import RECEIVE_WINDOW_OPTIONS
from connector.rpc.requests import RequestCheckInterceptor

__all__ = ["REFLECTION_V1", "ServerHandle", "Service", "build_server"]

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
"""The reflection service clients use today; grpcio-reflection serves only ``v1alpha``."""
_REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


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


def _renamed(type_name: str, old: str, new: str) -> str:
    return new + type_name[len(old) :] if type_name.startswith(old) else type_name


def _register_reflection_v1_descriptor() -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` into the default descriptor pool.

    The v1 protocol is the v1alpha one under a new package (the messages are identical on
    the wire), so its descriptor is v1alpha's renamed; a v1 client asking reflection about
    the reflection service then gets the file it expects.
    """
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_REFLECTION_V1_FILE)
        return  # already there (a second server in this process, or a newer grpcio)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = _REFLECTION_V1_FILE, "grpc.reflection.v1"
    for message in proto.message_type:
        for field_proto in message.field:
            if field_proto.HasField("type_name"):  # assigning even '' would set it
                field_proto.type_name = _renamed(field_proto.type_name, old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = _renamed(method.input_type, old, new)
            method.output_type = _renamed(method.output_type, old, new)
    pool.AddSerializedFile(proto.SerializeToString())


def _enable_reflection(server: grpc.Server, names: Sequence[str]) -> None:
    """Serve reflection as both ``v1alpha`` and ``v1``, with one implementation."""
    _register_reflection_v1_descriptor()
    servicer = reflection.ReflectionServicer([*names, reflection.SERVICE_NAME, REFLECTION_V1])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


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
    _enable_reflection(server, [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
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

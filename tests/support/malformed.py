"""Every RPC a tds server serves, and a way to send it anything (raw bytes, no serializer).

Shared by the fuzz suite (tests/fuzz, bench/fuzz.py) and the stop-under-load test.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.descriptor import Descriptor

import connector._proto.tds.v1 as tds_v1


@dataclass(frozen=True)
class Rpc:
    """One method of one service."""

    path: str
    """``/tds.v1.Service/Method``."""
    request: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def service(self) -> str:
        """The full service name."""
        return self.path.split("/")[1]


def tds_rpcs() -> list[Rpc]:
    """Every method of every service declared in connector/_proto (sorted, stable)."""
    found: list[Rpc] = []
    for info in pkgutil.iter_modules(tds_v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"{tds_v1.__name__}.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append(
                    Rpc(
                        f"/{service.full_name}/{method.name}",
                        method.input_type,
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    return sorted(found, key=lambda rpc: rpc.path)


def call_raw(
    channel: grpc.Channel, rpc: Rpc, bodies: Iterable[bytes], timeout: float = 10
) -> tuple[grpc.StatusCode, str]:
    """Send ``bodies`` (one for a unary request) as they are; the status and its details.

    A server-streaming answer is read to its end; OK comes back as ``StatusCode.OK``.
    """
    messages = list(bodies)
    try:
        if rpc.client_streaming and rpc.server_streaming:
            list(channel.stream_stream(rpc.path)(iter(messages), timeout=timeout))
        elif rpc.client_streaming:
            channel.stream_unary(rpc.path)(iter(messages), timeout=timeout)
        elif rpc.server_streaming:
            list(channel.unary_stream(rpc.path)(messages[0], timeout=timeout))
        else:
            channel.unary_unary(rpc.path)(messages[0], timeout=timeout)
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        return code, (err.details() if hasattr(err, "details") else "") or ""
    return grpc.StatusCode.OK, ""


def probe_channel(
    pki_dir: Path, space: str, port: int, target: str, key: Path, cert: Path, token: str | None
) -> grpc.Channel:
    """A channel to ``target`` on ``port`` that skips every client-side check (to probe it)."""
    creds = grpc.ssl_channel_credentials(
        (pki_dir / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(
        f"127.0.0.1:{port}",
        creds,
        options=[("grpc.ssl_target_name_override", f"{target}.{space}.tds")],
    )

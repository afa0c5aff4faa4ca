"""Client channels: mutual TLS to a named participant, membership token on every call."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from connector.errors import AuthenticationError, ConfigError, ConnectorError
from connector.identity.certs import read_file_bytes
from connector.identity.names import participant_dns_name
from connector.rpc.status import error_for_status

__all__ = ["RECEIVE_WINDOW_OPTIONS", "TlsIdentity", "calling", "open_channel"]


# A fixed HTTP/2 receive window per stream instead of one grown by bandwidth probing.
# When a transfer arrives faster than the disk takes it, gRPC buffers up to the window;
# grown by probing it let a consumer's connector reach 250-400 MB resident during a 1 GiB
# pull. 2 MiB keeps that bounded (with 8 MiB the consumer's connector peaked at 208-212
# MB, over the 200 MB line; with 4 MiB at 194, with 2 MiB at 187, no slower on one host)
# and still fills a link of 1 GB/s at 2 ms round trip, or 250 MB/s at 8 ms: a
# metropolitan network. Across longer distances raise it (memory grows with it).
RECEIVE_WINDOW_BYTES = 2 * 1024 * 1024
RECEIVE_WINDOW_OPTIONS = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", RECEIVE_WINDOW_BYTES),
)


@dataclass(frozen=True)
class TlsIdentity:
    """The PEM material a client presents and trusts."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def check(self, now: dt.datetime | None = None) -> None:
        """Refuse, with the reason, material that the peer's TLS handshake would reject.

        A server refuses a bad client certificate during the handshake, and all the client
        then sees is a closed socket; checking here first turns that into a clear error.
        """
        try:
            cas = x509.load_pem_x509_certificates(self.ca_pem)
            cert = x509.load_pem_x509_certificate(self.cert_pem)
        except ValueError as exc:
            raise ConfigError(f"TLS material is not PEM certificates: {exc}") from None
        now = now or dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AuthenticationError(
                f"the client certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d}, not now: get a new one from the operator"
            )
        for ca in cas:
            try:
                cert.verify_directly_issued_by(ca)
                return
            except (ValueError, TypeError, InvalidSignature):
                continue
        raise AuthenticationError(
            "the client certificate was not issued by the space CA this connector trusts: "
            "use the certificate the operator issued for this space"
        )

    @classmethod
    def load(cls, ca: Path, cert: Path, key: Path) -> TlsIdentity:
        """Read the three PEM files, naming any that is missing."""
        return cls(
            ca_pem=read_file_bytes(ca, "CA certificate"),
            cert_pem=read_file_bytes(cert, "client certificate"),
            key_pem=read_file_bytes(key, "client key"),
        )


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]  # generic only in the stubs
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]  # generic only in the stubs
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]  # generic only in the stubs
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]  # generic only in the stubs
):
    """Adds the membership token to every call, in the calling thread.

    gRPC's call-credentials plugin would do the same from a thread it starts for each
    call, which cost a quarter of a millisecond of CPU per call. The channel is always
    TLS (``open_channel``), so the token never travels in the clear either way.
    """

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self._token()}")]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def open_channel(
    address: str,
    tls: TlsIdentity,
    *,
    space: str,
    peer: str,
    token: Callable[[], str] | None = None,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> grpc.Channel:
    """A channel to participant ``peer`` at ``address``.

    The TLS target name is the participant's DNS name, so the handshake itself proves the
    server holds ``peer``'s certificate from the space CA, whatever the address says.
    """
    tls.check()
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
        )
    except Exception as exc:
        raise ConfigError(f"TLS material is unusable: {exc}") from None
    options = [
        ("grpc.ssl_target_name_override", participant_dns_name(space, peer)),
        ("grpc.default_authority", participant_dns_name(space, peer)),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        *RECEIVE_WINDOW_OPTIONS,
    ]
    channel = grpc.secure_channel(address, creds, options=options)
    return grpc.intercept_channel(channel, _BearerToken(token)) if token is not None else channel


@contextmanager
def calling(peer: str) -> Iterator[None]:
    """Turn a failed gRPC call to ``peer`` into the matching ``ConnectorError``."""
    try:
        yield
    except grpc.RpcError as err:
        raise error_for_status(err, peer) from None
    except ConnectorError:
        raise

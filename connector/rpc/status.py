"""The one place where tds errors and gRPC status codes meet, in both directions."""

from __future__ import annotations

import grpc

from connector import errors

__all__ = ["error_for_status", "status_for"]

_STATUS: list[tuple[type[errors.ConnectorError], grpc.StatusCode]] = [
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.VerificationError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.ConfigError, grpc.StatusCode.INTERNAL),
]

_ERROR: dict[grpc.StatusCode, type[errors.ConnectorError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidRequest,
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.ConflictError,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.FAILED_PRECONDITION: errors.PreconditionFailed,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
}


def status_for(exc: errors.ConnectorError) -> grpc.StatusCode:
    """The status code a server answers with for ``exc``."""
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


# What BoringSSL/gRPC say when the peer refused our certificate during the handshake.
_HANDSHAKE_MARKERS = ("handshake", "CERTIFICATE_VERIFY", "SSL_ERROR", "alert")


def error_for_status(err: grpc.RpcError, peer: str) -> errors.ConnectorError:
    """A tds error for a failed call to ``peer``, keeping the server's message."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or ""
    _, sep, reason = details.partition("Getting metadata from plugin failed with error: ")
    if sep:
        # Fetching our own membership token failed; its reason already names the registry.
        return errors.AuthenticationError(f"no membership token for the call to {peer}: {reason}")
    if code is grpc.StatusCode.UNAVAILABLE and details.startswith("Stream removed"):
        # The call was under way when the connection broke (the peer was killed, or the
        # network failed): the handshake had long succeeded, so no certificate is to blame.
        return errors.Unavailable(
            f"the connection to {peer} broke during the call ({details}): {peer} stopped or "
            "the network failed; try again once it is running"
        )
    if code is grpc.StatusCode.UNAVAILABLE and (
        "Hostname Verification" in details or "Peer name" in details
    ):
        return errors.AuthenticationError(
            f"the server at that address is not {peer}: its certificate names someone else"
        )
    if code is grpc.StatusCode.UNAVAILABLE and any(m in details for m in _HANDSHAKE_MARKERS):
        return errors.AuthenticationError(
            f"{peer} refused the TLS handshake: use a certificate issued by the space CA that "
            f"is valid now and not revoked ({details})"
        )
    if code is grpc.StatusCode.UNAVAILABLE and "Connection refused" in details:
        where = details.rsplit("ipv4:", 1)[-1].split(":")[:2] if "ipv4:" in details else []
        at = f" at {':'.join(where)}" if len(where) == 2 else ""
        return errors.Unavailable(
            f"{peer}{at} is not reachable (connection refused): "
            "is it running, and is the address in its config right?"
        )
    if code is grpc.StatusCode.UNAVAILABLE and "Socket closed" in details:
        return errors.Unavailable(
            f"{peer} closed the connection during the TLS handshake: it may have refused this "
            "certificate (revoked, expired or from another CA), or it is not a tds connector"
        )
    cls = _ERROR.get(code, errors.ConnectorError)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return cls(f"{peer} did not answer in time")
    return cls(f"{peer}: {details}" if details else f"{peer} failed with {code.name}")

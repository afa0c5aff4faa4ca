"""DSP error objects and HTTP statuses for tds errors: the binding's one mapping place."""

from __future__ import annotations

from typing import Any

from connector import errors
from connector.dsp.jsonld import CONTEXT

__all__ = ["error_body", "http_status"]

_STATUS: list[tuple[type[errors.ConnectorError], int]] = [
    (errors.InvalidRequest, 400),
    (errors.AuthenticationError, 401),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
    (errors.ConflictError, 409),
    # DSP: a message that would make a transition the protocol refuses is a 400.
    (errors.PreconditionFailed, 400),
    (errors.VerificationError, 400),
    (errors.Aborted, 409),
    (errors.Unavailable, 503),
]


def http_status(exc: errors.ConnectorError) -> int:
    """The HTTP status of a tds error (500 for one that names no client fault)."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_body(
    kind: str, status: int, reason: str, *, provider_pid: str = "", consumer_pid: str = ""
) -> dict[str, Any]:
    """A ``CatalogError``, ``ContractNegotiationError`` or ``TransferError``.

    The negotiation and transfer errors must name both process ids; where the request did
    not get far enough to know one, it is the empty string.
    """
    body: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": kind,
        "code": str(status),
        "reason": [reason],
    }
    if kind != "CatalogError":
        body["providerPid"] = provider_pid
        body["consumerPid"] = consumer_pid
    return body

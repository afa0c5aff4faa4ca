"""The error hierarchy every layer raises.

Messages are shown to users and peers: each says what was wrong and what to do about it,
without secrets or internals. The mapping to gRPC status codes lives in one place,
``connector.rpc.status``.
"""

from __future__ import annotations

__all__ = [
    "Aborted",
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "ConnectorError",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "PreconditionFailed",
    "Unavailable",
    "VerificationError",
]


class ConnectorError(Exception):
    """Root of every error tds raises on purpose."""


class ConfigError(ConnectorError):
    """A configuration file, field or key file is missing or malformed."""


class InvalidRequest(ConnectorError):
    """The request is malformed; nothing was changed."""


class AuthenticationError(ConnectorError):
    """The caller's certificate or membership token did not verify."""


class PermissionDenied(ConnectorError):
    """The caller is authenticated but not allowed to do this."""


class NotFound(ConnectorError):
    """The thing asked for does not exist (or the caller may not know that it does)."""


class ConflictError(ConnectorError):
    """The request conflicts with existing state (for example, already enrolled)."""


class PreconditionFailed(ConnectorError):
    """The request is valid but not in the current state (for example, a revoked entry)."""


class VerificationError(ConnectorError):
    """A signature, token, list or proof did not verify."""


class Aborted(ConnectorError):
    """A concurrent change got there first; the same request may succeed if retried."""


class Unavailable(ConnectorError):
    """A dependency (registry, revocation list, database, policy engine) is unavailable."""

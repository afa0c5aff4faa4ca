"""Authentication of every call: the server interceptor and the verified caller.

A call is accepted only with a client certificate from the space CA (checked by TLS and
again here) and, for member methods, a membership token whose signature (EdDSA pinned),
type, issuer, audience, expiry and ``cnf`` binding to that very certificate verify, for a
participant that is not revoked. Once this connector's own participant is revoked, member
and certificate-only calls are refused but for reading its audit log, by auditors and the
operator. Admin methods take the administrator certificate of this connector's own
participant. What handlers see is ``current_caller()``; no request field can change it.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.clock import Clock
from connector.errors import (
    AuthenticationError,
    ConnectorError,
    InvalidRequest,
    PermissionDenied,
)
from connector.identity.certs import certificate_name, certificate_thumbprint, parse_certificate_pem
from connector.identity.names import ADMIN_URI_KIND, PARTICIPANT_URI_KIND, CertificateName, Role
from connector.identity.tokens import Membership, check_token_time, membership_of_token
from connector.registry.revocation import RevocationList
from connector.rpc.status import status_for

__all__ = [
    "Access",
    "AuthInterceptor",
    "Authenticator",
    "Caller",
    "RevocationSource",
    "current_caller",
]

log = logging.getLogger(__name__)


class Access(Enum):
    """Who may call a method."""

    TRANSPORT = "transport"
    """Any TLS client the space CA certified (health checking, reflection)."""
    CERTIFICATE = "certificate"
    """A non-revoked participant or admin certificate, no token (token issuance, revocations,
    the DSP data endpoint); refused, as ``MEMBER``, once this connector's own participant
    is revoked."""
    MEMBER = "member"
    """A participant certificate plus a membership token bound to it."""
    ADMIN = "admin"
    """The administrator certificate of this connector's own participant."""
    EVIDENCE = "evidence"
    """As ``MEMBER``; still answered once this connector's own participant is revoked, and
    then only to auditors and the operator (reading its audit log)."""


# Who may still read a revoked participant's audit log: the evidence outlives the membership.
_EXAMINERS = frozenset({Role.AUDITOR.value, Role.OPERATOR.value})


# Standard services every server registers; they reveal nothing about data.
_TRANSPORT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Caller:
    """The verified identity behind a call."""

    participant: str
    """The participant named by the certificate (for an admin: whose admin)."""
    kind: str
    """``participant`` or ``admin``."""
    certificate_serial: int
    certificate_thumbprint: str
    membership: Membership | None = None
    """Present for member calls."""
    attrs: dict[str, str] = field(default_factory=dict)
    revoked_grants: frozenset[str] = frozenset()
    """Ids of the caller's authorised-operation grants on the revocation list in force
    when the call was authenticated (its token may still carry them)."""

    @property
    def role(self) -> str:
        """The role the membership token grants ('' without a token)."""
        return self.membership.role if self.membership else ""


class RevocationSource(Protocol):
    """Where the revocation list in force comes from."""

    def current(self) -> RevocationList:
        """The list in force, or ``Unavailable`` when none is fresh enough."""
        ...


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("tds_caller", default=None)


def current_caller() -> Caller:
    """The verified caller of the call being handled; fails closed outside one."""
    caller = _CALLER.get()
    if caller is None:
        raise AuthenticationError("no authenticated caller for this call")
    return caller


@functools.lru_cache(maxsize=256)
def _peer_certificate(pem: bytes) -> tuple[x509.Certificate, CertificateName, str]:
    """A client certificate parsed, with its name and thumbprint (parsed once per PEM).

    The TLS handshake has verified it against the space CA; validity and revocation are
    checked on every call.
    """
    cert = parse_certificate_pem(pem, "client certificate")
    return cert, certificate_name(cert), certificate_thumbprint(cert)


class Authenticator:
    """Checks the certificate and token of one call against this connector's trust anchors."""

    def __init__(
        self,
        *,
        space: str,
        participant: str,
        operator_key: ed25519.Ed25519PublicKey,
        issuer: str,
        revocations: RevocationSource,
        clock: Clock,
        leeway_seconds: int = 30,
    ) -> None:
        self._space = space
        self._participant = participant
        self._operator_key = operator_key
        self._issuer = issuer
        self._revocations = revocations
        self._clock = clock
        self._leeway = leeway_seconds
        # A member calls many times with one token: its signature and claims are checked
        # once (exceptions are not remembered), its times and binding on every call.
        self._membership = functools.lru_cache(maxsize=1024)(
            functools.partial(membership_of_token, key=operator_key, issuer=issuer, space=space)
        )

    def authenticate(self, access: Access, context: grpc.ServicerContext) -> Caller | None:
        """Return the verified caller, or raise; ``None`` for transport-level methods."""
        if access is Access.TRANSPORT:
            return None
        found: bytes | list[bytes] = context.auth_context().get("x509_pem_cert") or []
        pems = [found] if isinstance(found, bytes) else list(found)
        authorization = [
            v if isinstance(v, str) else v.decode("ascii", "replace")
            for k, v in context.invocation_metadata()
            if k == "authorization"
        ]
        return self.authenticate_presented(access, pems, authorization)

    def authenticate_presented(
        self, access: Access, pems: list[bytes], authorization: list[str]
    ) -> Caller | None:
        """As ``authenticate``, from what the peer presented: its TLS certificate chain
        (PEM, the handshake having verified it against the space CA) and its
        ``authorization`` values. Other transports (the DSP HTTPS binding) call this."""
        if access is Access.TRANSPORT:
            return None
        if not pems:
            raise AuthenticationError(
                "no client certificate: connect with mutual TLS and a certificate from the space CA"
            )
        cert, name, thumbprint = _peer_certificate(pems[0])
        if name.space != self._space:
            raise AuthenticationError(
                f"client certificate is for space {name.space!r}, not {self._space!r}"
            )
        now = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC)
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise AuthenticationError("client certificate is expired or not yet valid")
        revocations = self._revocations.current()
        revocations.check(name.participant, cert.serial_number)
        if access is Access.ADMIN:
            if name.kind != ADMIN_URI_KIND or name.participant != self._participant:
                raise PermissionDenied(
                    f"this call needs the administrator certificate of {self._participant!r}"
                )
            return Caller(name.participant, ADMIN_URI_KIND, cert.serial_number, thumbprint)
        if access is Access.CERTIFICATE:
            self._refuse_once_revoked(revocations)
            return Caller(name.participant, name.kind, cert.serial_number, thumbprint)
        if name.kind != PARTICIPANT_URI_KIND:
            raise PermissionDenied(
                "administrator certificates cannot make member calls; use the connector's "
                "participant certificate and a membership token"
            )
        membership = self._verify_token(authorization, name.participant, thumbprint)
        if not (access is Access.EVIDENCE and membership.role in _EXAMINERS):
            self._refuse_once_revoked(revocations)
        return Caller(
            name.participant,
            PARTICIPANT_URI_KIND,
            cert.serial_number,
            thumbprint,
            membership=membership,
            attrs=dict(membership.attrs),
            revoked_grants=revocations.revoked_grants(name.participant),
        )

    def _refuse_once_revoked(self, revocations: RevocationList) -> None:
        """Refuse the call when this connector's own participant is revoked."""
        if self._participant in revocations.participants:
            raise PermissionDenied(
                f"participant {self._participant!r} has been revoked by the operator: its "
                "connector answers only auditors and the operator reading its audit log"
            )

    def _verify_token(self, values: list[str], participant: str, thumbprint: str) -> Membership:
        if not values:
            raise AuthenticationError(
                "no membership token: send 'authorization: Bearer <token>' from the registry"
            )
        if len(values) > 1:
            raise AuthenticationError("more than one authorization header")
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("authorization must be 'Bearer <membership token>'")
        membership, issued_at = self._membership(token.strip())
        check_token_time(membership.expires_at, issued_at, self._clock.now(), self._leeway)
        if membership.participant != participant:
            raise AuthenticationError(
                f"membership token is for {membership.participant!r} but the certificate "
                f"names {participant!r}"
            )
        if membership.certificate_thumbprint != thumbprint:
            raise AuthenticationError(
                "membership token is bound to a different certificate (cnf.x5t#S256)"
            )
        return membership


Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _fail(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, ConnectorError):
        code = status_for(exc)
        level = logging.INFO if code is not grpc.StatusCode.INTERNAL else logging.ERROR
        log.log(
            level, "call refused", extra={"method": method, "status": code.name, "reason": str(exc)}
        )
        context.abort(code, str(exc))
    log.exception("unexpected error", extra={"method": method})
    context.abort(grpc.StatusCode.INTERNAL, "internal error in the connector; see its log")


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates every call and maps tds errors to gRPC status codes.

    ``access`` names the access level of every method the server serves; a method missing
    from it is refused (fail closed), except the standard health and reflection services.
    """

    def __init__(self, authenticator: Authenticator, access: Mapping[str, Access]) -> None:
        self._auth = authenticator
        self._access = dict(access)

    def _access_for(self, method: str) -> Access | None:
        if method in self._access:
            return self._access[method]
        if method.startswith(_TRANSPORT_PREFIXES):
            return Access.TRANSPORT
        return None

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        """Wrap the handler of each call with authentication and error mapping."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        access = self._access_for(method)

        def authenticate(context: grpc.ServicerContext) -> Caller | None:
            if access is None:
                raise PermissionDenied(f"method {method} is not open to any caller")
            return self._auth.authenticate(access, context)

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    token = _CALLER.set(authenticate(context))
                    try:
                        return inner(request, context)
                    finally:
                        _CALLER.reset(token)
                except Exception as exc:
                    _fail(context, exc, method)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(unary, handler.request_deserializer, handler.response_serializer)

        inner_stream = handler.unary_stream or handler.stream_stream

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                caller = authenticate(context)
                responses = inner_stream(request, context)
                while True:
                    # The caller is visible to handler code between yields, nowhere else.
                    token = _CALLER.set(caller)
                    try:
                        item = next(responses)
                    except StopIteration:
                        return
                    finally:
                        _CALLER.reset(token)
                    yield item
            except Exception as exc:
                _fail(context, exc, method)

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(streaming, handler.request_deserializer, handler.response_serializer)


def ensure(condition: bool, message: str) -> None:
    """Raise ``InvalidRequest(message)`` unless ``condition`` (request validation helper)."""
    if not condition:
        raise InvalidRequest(message)

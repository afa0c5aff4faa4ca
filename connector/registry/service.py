"""``RegistryService``: the operator's directory, membership tokens and revocation list."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from connector.audit.log import AuditLog
from connector.catalog.paging import Filters
from connector.clock import Clock
from connector.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from connector.identity.certs import (
    certificate_name,
    certificate_thumbprint,
    parse_certificate_pem,
)
from connector.identity.names import PARTICIPANT_URI_KIND, Role, check_id
from connector.identity.tokens import issue_membership_token
from connector.registry.directory import (
    PeerInfo,
    directory_entries,
    entries_digest,
    sign_directory_head,
)
from connector.registry.grants import (
    GRANTS_ATTRIBUTE,
    GrantRecord,
    GrantStore,
    grants_attribute,
    new_grant,
    sign_grant,
)
from connector.registry.index import CatalogIndex
from connector.registry.revocation import RevocationList, sign_revocation_list
from connector.registry.store import DirectoryEntry, DirectoryStore
from connector.rpc.auth import Access, current_caller, ensure
from connector.rpc.server import Service

__all__ = [
    "WATCH_HEARTBEAT_SECONDS",
    "LocalRevocations",
    "OperatorKeys",
    "RegistryServicer",
    "registry_service",
]

log = logging.getLogger(__name__)

WATCH_HEARTBEAT_SECONDS = 10.0
"""How often a revocation stream re-sends the list when nothing changed: keeps a member's
list young and shows it the stream is alive."""
_MAX_ATTRS = 32
_MAX_ATTR_LEN = 1024


@dataclass(frozen=True)
class OperatorKeys:
    """What the operator signs tokens and revocation lists with."""

    space: str
    issuer: str
    signing_key: ed25519.Ed25519PrivateKey
    ca_certificate: x509.Certificate
    token_ttl_seconds: int

    @property
    def operator_id(self) -> str:
        """The operator's participant id (the last part of the issuer URI)."""
        return self.issuer.rsplit(":", 1)[-1]


class LocalRevocations:
    """The operator's own revocation state, read from its store (it is the source).

    Revoked participants and certificates come from the directory, revoked grants from
    the grant store; the serial counts all three (none is ever undone, so it only grows).
    """

    def __init__(
        self,
        store: DirectoryStore,
        clock: Clock,
        cache_seconds: float = 1.0,
        grants: GrantStore | None = None,
    ) -> None:
        self._store = store
        self._grants = grants
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._version = 0
        self._cached: tuple[float, RevocationList] | None = None

    def current(self) -> RevocationList:
        """The revocation list as of now (cached briefly; dropped on every change)."""
        now = self._clock.now()
        with self._lock:
            if self._cached and now - self._cached[0] < self._cache_seconds:
                return self._cached[1]
        revocations = self._store.revocations(now=int(now))
        if self._grants is not None:
            revoked = self._grants.revoked()
            revocations = dataclasses.replace(
                revocations, serial=revocations.serial + len(revoked), grants=revoked
            )
        with self._lock:
            self._cached = (now, revocations)
        return revocations

    def invalidate(self) -> None:
        """Forget the cached list (after a revocation or enrolment) and wake the watchers."""
        with self._changed:
            self._cached = None
            self._version += 1
            self._changed.notify_all()

    def watch(
        self, active: Callable[[], bool], *, heartbeat: float, poll: float = 1.0
    ) -> Iterator[RevocationList]:
        """The list now, then each new one while ``active()``: at once for a change made
        through this process, within ``poll`` plus the cache for one another replica made
        in the shared database; the same list again after ``heartbeat`` seconds of quiet."""
        sent: RevocationList | None = None
        sent_at = 0.0
        while active():
            with self._lock:
                seen = self._version
            current = self.current()
            if (
                sent is None
                or current.serial != sent.serial
                or time.monotonic() - sent_at >= heartbeat
            ):
                sent, sent_at = current, time.monotonic()
                yield current
            with self._changed:
                if self._version == seen:
                    self._changed.wait(poll)


@functools.lru_cache(maxsize=4096)
def certificate_not_after_ms(certificate_pem: str) -> int:
    """The notAfter of a stored certificate, Unix milliseconds (0 if it cannot be read).

    Read from the PEM stored at enrolment, which enrolment already parsed and checked, so
    a stored certificate always has one; cached by PEM because ``GetDirectory`` and
    ``ListParticipants`` answer every participant on every call."""
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError:
        log.warning("a stored participant certificate is not a PEM X.509 certificate")
        return 0
    return int(cert.not_valid_after_utc.timestamp() * 1000)


def participant_message(entry: DirectoryEntry) -> common_pb2.Participant:
    """The wire form of a directory entry."""
    return common_pb2.Participant(
        id=entry.id,
        role=entry.role,
        address=entry.address,
        signing_public_key=entry.signing_public_key,
        certificate_thumbprint=entry.certificate_thumbprint,
        attributes=entry.attributes,
        revoked=entry.revoked,
        enrolled_at=entry.enrolled_at,
        certificate_not_after_ms=certificate_not_after_ms(entry.certificate_pem),
    )


def grant_message(record: GrantRecord) -> registry_pb2.OperationGrant:
    """The wire form of a grant."""
    g = record.grant
    return registry_pb2.OperationGrant(
        id=g.id,
        participant_id=g.participant,
        scope=list(g.scope),
        purposes=list(g.purposes),
        start_ns=g.start_ns,
        end_ns=g.end_ns,
        body=g.body,
        issued_ms=g.issued_ms,
        revoked=record.revoked,
        revoked_ms=record.revoked_ms,
        revoked_reason=record.revoked_reason,
        signed=record.signed,
    )


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Serves the operator registry; every method raises tds errors, never aborts."""

    def __init__(
        self,
        store: DirectoryStore,
        keys: OperatorKeys,
        revocations: LocalRevocations,
        clock: Clock,
        audit: AuditLog,
        index: CatalogIndex | None = None,
        grants: GrantStore | None = None,
        *,
        stopping: threading.Event | None = None,
        max_watchers: int = 8,
    ) -> None:
        self._stopping = stopping or threading.Event()
        self._max_watchers = max_watchers
        self._watchers = 0
        self._watchers_lock = threading.Lock()
        self._index = index
        self._grants = grants
        self._audit = audit
        self._store = store
        self._keys = keys
        self._revocations = revocations
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock.now())

    def validate_enrolment(self, request: registry_pb2.EnrolRequest) -> DirectoryEntry:
        """Check an enrolment request completely before anything is stored."""
        pid = check_id(request.participant_id)
        role = Role.parse(request.role)
        if request.address:
            host, sep, port = request.address.rpartition(":")
            ensure(
                bool(sep and host and port.isdigit() and 0 < int(port) < 65536),
                f"address must be host:port, got {request.address!r}",
            )
        ensure(
            role in (Role.AUDITOR,) or bool(request.address),
            f"a {role.value} runs a connector: give its address (host:port)",
        )
        cert = parse_certificate_pem(request.tls_certificate_pem.encode(), "tls_certificate_pem")
        try:
            cert.verify_directly_issued_by(self._keys.ca_certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise InvalidRequest("tls_certificate_pem was not issued by this space's CA") from None
        try:
            name = certificate_name(cert)
        except AuthenticationError as exc:
            raise InvalidRequest(f"tls_certificate_pem: {exc}") from None
        ensure(
            name.kind == PARTICIPANT_URI_KIND
            and name.space == self._keys.space
            and name.participant == pid,
            f"tls_certificate_pem must name urn:tds:{self._keys.space}:participant:{pid}",
        )
        now = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC)
        ensure(
            cert.not_valid_before_utc <= now <= cert.not_valid_after_utc,
            "tls_certificate_pem is expired or not yet valid",
        )
        ensure(
            len(request.signing_public_key) == 32,
            "signing_public_key must be the 32 raw bytes of an Ed25519 public key",
        )
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(request.signing_public_key)
        except ValueError:
            raise InvalidRequest("signing_public_key is not a valid Ed25519 key") from None
        attrs = dict(request.attributes)
        ensure(len(attrs) <= _MAX_ATTRS, f"at most {_MAX_ATTRS} attributes")
        ensure(
            GRANTS_ATTRIBUTE not in attrs,
            f"{GRANTS_ATTRIBUTE} is set by the operator's grants: use 'tds registry grant'",
        )
        ensure(
            all(len(k) <= 64 and len(v) <= _MAX_ATTR_LEN for k, v in attrs.items()),
            f"attribute names at most 64 characters, values at most {_MAX_ATTR_LEN}",
        )
        return DirectoryEntry(
            id=pid,
            role=role.value,
            address=request.address,
            signing_public_key=bytes(request.signing_public_key),
            certificate_pem=request.tls_certificate_pem,
            certificate_thumbprint=certificate_thumbprint(cert),
            certificate_serial=format(cert.serial_number, "x"),
            attributes=attrs,
        )

    def Enrol(self, request: registry_pb2.EnrolRequest, context: Any) -> registry_pb2.EnrolResponse:
        """Add a participant (admin only); logged before it is acknowledged."""
        candidate = self.validate_enrolment(request)
        self._audit.record(
            "registry.enrol",
            parties=[candidate.id],
            data={
                "participant": candidate.id,
                "role": candidate.role,
                "address": candidate.address,
                "certificate_thumbprint": candidate.certificate_thumbprint,
                "replace": request.replace,
                "by": current_caller().participant,
            },
        )
        entry = self._store.enrol(candidate, replace=request.replace, now=self._now())
        self._revocations.invalidate()
        log.info(
            "participant enrolled",
            extra={"participant": entry.id, "role": entry.role, "by": current_caller().participant},
        )
        return registry_pb2.EnrolResponse(participant=participant_message(entry))

    def Revoke(
        self, request: registry_pb2.RevokeRequest, context: Any
    ) -> registry_pb2.RevokeResponse:
        """Revoke a participant (admin only)."""
        pid = check_id(request.participant_id)
        reason = request.reason.strip()
        ensure(0 < len(reason) <= 1024, "give a reason (1-1024 characters) for the revocation")
        self._store.get(pid)  # NotFound before anything is logged
        self._audit.record(
            "registry.revoke",
            parties=[pid],
            data={"participant": pid, "reason": reason, "by": current_caller().participant},
        )
        self._store.revoke(pid, reason, now=self._now())
        self._revocations.invalidate()  # pushed to every watching member at once
        log.warning("participant revoked", extra={"participant": pid, "reason": reason})
        return registry_pb2.RevokeResponse(
            revocation_list_serial=self._revocations.current().serial
        )

    def IssueToken(
        self, request: registry_pb2.IssueTokenRequest, context: Any
    ) -> registry_pb2.IssueTokenResponse:
        """A membership token for the participant named by the client certificate."""
        caller = current_caller()
        if caller.kind != PARTICIPANT_URI_KIND:
            raise PermissionDenied("membership tokens are issued to participant certificates only")
        try:
            entry = self._store.get(caller.participant)
        except NotFound:
            raise PermissionDenied(
                f"{caller.participant!r} is not enrolled: ask the operator to enrol it"
            ) from None
        if entry.revoked:
            raise AuthenticationError(f"participant {entry.id!r} has been revoked")
        if entry.certificate_thumbprint != caller.certificate_thumbprint:
            raise AuthenticationError(
                "this certificate is not the one enrolled for the participant: ask the "
                "operator to enrol the new certificate"
            )
        token, exp = issue_membership_token(
            self._keys.signing_key,
            issuer=self._keys.issuer,
            space=self._keys.space,
            participant=entry.id,
            role=entry.role,
            certificate_thumbprint=entry.certificate_thumbprint,
            attrs=self._token_attributes(entry),
            now=self._clock.now(),
            ttl_seconds=self._keys.token_ttl_seconds,
        )
        return registry_pb2.IssueTokenResponse(token=token, expires_at=exp)

    def own_token(self) -> str:
        """A membership token for the operator itself (its own directory entry), to call
        members' connectors: the catalog index confirms listings with the provider."""
        entry = self._store.get(self._keys.operator_id)
        token, _ = issue_membership_token(
            self._keys.signing_key,
            issuer=self._keys.issuer,
            space=self._keys.space,
            participant=entry.id,
            role=entry.role,
            certificate_thumbprint=entry.certificate_thumbprint,
            attrs=dict(entry.attributes),
            now=self._clock.now(),
            ttl_seconds=min(self._keys.token_ttl_seconds, 60),
        )
        return token

    def _token_attributes(self, entry: DirectoryEntry) -> dict[str, str]:
        """Directory attributes plus the participant's unrevoked grants."""
        attrs = dict(entry.attributes)
        if self._grants is not None:
            held = self._grants.list(entry.id)
            if held:
                attrs[GRANTS_ATTRIBUTE] = grants_attribute(held)
        return attrs

    def _grant_store(self) -> GrantStore:
        if self._grants is None:
            raise PreconditionFailed("this registry keeps no authorised-operation grants")
        return self._grants

    def GrantOperation(
        self, request: registry_pb2.GrantOperationRequest, context: Any
    ) -> registry_pb2.OperationGrant:
        """Grant a participant the right to operate public data (admin only)."""
        store = self._grant_store()
        pid = check_id(request.participant_id)
        entry = self._store.get(pid)
        if entry.revoked:
            raise PreconditionFailed(f"participant {pid!r} is revoked")
        ensure(
            entry.role in (Role.ENTERPRISE.value, Role.GOVERNMENT.value),
            f"public data is operated by enterprises or government bodies, not by {entry.id} "
            f"(role {entry.role})",
        )
        grant = new_grant(
            participant=pid,
            scope=list(request.scope),
            purposes=list(request.purposes),
            start_ns=request.start_ns,
            end_ns=request.end_ns,
            body=request.body,
            issued_ms=int(self._clock.now() * 1000),
        )
        signed = sign_grant(grant, self._keys.operator_id, self._keys.signing_key)
        self._audit.record(
            "registry.grant",
            parties=[pid],
            data={
                "grant": grant.id,
                "participant": pid,
                "scope": list(grant.scope),
                "purposes": list(grant.purposes),
                "start_ns": str(grant.start_ns),
                "end_ns": str(grant.end_ns),
                "body": grant.body,
                "by": current_caller().participant,
            },
        )
        record = store.add(grant, signed)
        log.info("operation granted", extra={"participant": pid, "grant": grant.id})
        return grant_message(record)

    def RevokeGrant(
        self, request: registry_pb2.RevokeGrantRequest, context: Any
    ) -> registry_pb2.OperationGrant:
        """Revoke a grant (admin only): it enters the revocation list, pushed to every
        watching member at once, and leaves the participant's next token."""
        store = self._grant_store()
        reason = request.reason.strip()
        ensure(0 < len(reason) <= 1024, "give a reason (1-1024 characters) for the revocation")
        held = store.get(request.grant_id)
        if held.revoked:
            raise PreconditionFailed(f"operation grant {request.grant_id!r} is already revoked")
        self._audit.record(
            "registry.grant_revoked",
            parties=[held.grant.participant],
            data={
                "grant": held.grant.id,
                "participant": held.grant.participant,
                "reason": reason,
                "by": current_caller().participant,
            },
        )
        record = store.revoke(held.grant.id, reason, now_ms=int(self._clock.now() * 1000))
        self._revocations.invalidate()
        log.warning("operation grant revoked", extra={"grant": held.grant.id, "reason": reason})
        return grant_message(record)

    def ListGrants(
        self, request: registry_pb2.ListGrantsRequest, context: Any
    ) -> registry_pb2.ListGrantsResponse:
        """Grants are public: authorised operation is disclosed to every member."""
        pid = check_id(request.participant_id) if request.participant_id else ""
        records = self._grant_store().list(pid, include_revoked=request.include_revoked)
        return registry_pb2.ListGrantsResponse(grants=[grant_message(r) for r in records])

    def Lookup(
        self, request: registry_pb2.LookupRequest, context: Any
    ) -> registry_pb2.LookupResponse:
        """One participant of the directory."""
        entry = self._store.get(check_id(request.participant_id))
        return registry_pb2.LookupResponse(participant=participant_message(entry))

    def ListParticipants(
        self, request: registry_pb2.ListParticipantsRequest, context: Any
    ) -> registry_pb2.ListParticipantsResponse:
        """Participants, optionally of one role."""
        role = Role.parse(request.role).value if request.role else None
        entries = self._store.list(role)
        return registry_pb2.ListParticipantsResponse(
            participants=[participant_message(e) for e in entries]
        )

    def GetDirectory(
        self, request: registry_pb2.GetDirectoryRequest, context: Any
    ) -> registry_pb2.GetDirectoryResponse:
        """Every participant, under a freshly signed head; the head alone when the caller
        already holds these entries (``held_digest``)."""
        entries = directory_entries(
            [PeerInfo.from_message(participant_message(e)) for e in self._store.list(None)]
        )
        head = sign_directory_head(
            self._keys.signing_key,
            issuer=self._keys.issuer,
            space=self._keys.space,
            entries=entries,
            issued_at=self._now(),
        )
        unchanged = request.held_digest == entries_digest(entries)
        return registry_pb2.GetDirectoryResponse(head=head, entries="" if unchanged else entries)

    def RegisterProduct(self, request: Any, context: Any) -> Any:
        """List a product of the caller in the catalog index."""
        if self._index is None:
            raise PreconditionFailed("this registry keeps no catalog index")
        code = self._index.register(current_caller(), request.product_json, request.public)
        return registry_pb2.RegisterProductResponse(registration_code=code)

    def SearchCatalog(self, request: Any, context: Any) -> Any:
        """Listings the caller may see."""
        if self._index is None:
            raise PreconditionFailed("this registry keeps no catalog index")
        filters = Filters(
            tag=request.tag, domain=request.domain, grade=request.grade, text=request.text
        )
        found, following = self._index.search(
            current_caller(),
            filters,
            size=request.page_size if request.HasField("page_size") else None,
            token=request.page_token,
        )
        return registry_pb2.SearchCatalogResponse(
            next_page_token=following,
            max_page_size=self._index.max_page_size,
            listings=[
                registry_pb2.CatalogListing(
                    provider=provider,
                    product_id=p.id,
                    title=p.title,
                    description=p.description,
                    grade=p.grade,
                    tags=list(p.tags),
                    registration_code=code,
                    registered_at=when // 1000,
                )
                for provider, p, code, when in found
            ],
        )

    def GetRevocationList(
        self, request: registry_pb2.GetRevocationListRequest, context: Any
    ) -> registry_pb2.GetRevocationListResponse:
        """The revocation list, freshly signed."""
        return self._signed(self._revocations.current())

    def _signed(self, revocations: RevocationList) -> registry_pb2.GetRevocationListResponse:
        signed = sign_revocation_list(
            self._keys.signing_key,
            issuer=self._keys.issuer,
            space=self._keys.space,
            revocations=revocations,
        )
        return registry_pb2.GetRevocationListResponse(revocation_list=signed)

    def WatchRevocations(
        self, request: registry_pb2.WatchRevocationsRequest, context: Any
    ) -> Iterator[registry_pb2.GetRevocationListResponse]:
        """The signed list now and each new one as it is made, until the caller or the
        registry stops; at most ``max_watchers`` at once (each holds a server worker)."""
        with self._watchers_lock:
            if self._watchers >= self._max_watchers:
                raise Unavailable(
                    f"the registry serves at most {self._max_watchers} revocation streams; "
                    "fetch the list with GetRevocationList meanwhile"
                )
            self._watchers += 1
        caller = current_caller()
        try:
            active = lambda: context.is_active() and not self._stopping.is_set()  # noqa: E731
            for revocations in self._revocations.watch(active, heartbeat=WATCH_HEARTBEAT_SECONDS):
                yield self._signed(revocations)
                try:
                    revocations.check(caller.participant, caller.certificate_serial)
                except AuthenticationError:
                    return  # revoked: it has the list that says so; its slot is freed
        finally:
            with self._watchers_lock:
                self._watchers -= 1


def registry_service(servicer: RegistryServicer) -> Service:
    """The registry as a served service with its access table."""
    return Service(
        name="tds.v1.RegistryService",
        add=registry_pb2_grpc.add_RegistryServiceServicer_to_server,
        servicer=servicer,
        access={
            "Enrol": Access.ADMIN,
            "Revoke": Access.ADMIN,
            "IssueToken": Access.CERTIFICATE,
            # Signed by the operator and public to every member: a revoked connector
            # still needs a fresh one to authenticate the auditors who read its log.
            "GetRevocationList": Access.TRANSPORT,
            # Pushes hold a worker each: only certificates not revoked may keep one.
            "WatchRevocations": Access.CERTIFICATE,
            "Lookup": Access.MEMBER,
            "ListParticipants": Access.MEMBER,
            "RegisterProduct": Access.MEMBER,
            "SearchCatalog": Access.MEMBER,
            "GrantOperation": Access.ADMIN,
            "RevokeGrant": Access.ADMIN,
            "ListGrants": Access.MEMBER,
            "GetDirectory": Access.MEMBER,
        },
    )

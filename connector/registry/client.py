"""A connector's view of the registry: its own token, lookups, and the revocation list.

The client keeps a membership token and a verified revocation list, refreshing both before
they run out. When no fresh list is held, ``current()`` raises ``Unavailable`` and the
connector refuses calls: an unreachable registry never means "nobody is revoked".
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from connector.clock import Clock
from connector.errors import AuthenticationError, ConnectorError, Unavailable, VerificationError
from connector.registry.revocation import RevocationList, verify_revocation_list
from connector.rpc.channel import TlsIdentity, calling, open_channel

__all__ = ["PeerInfo", "RegistryClient"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerInfo:
    """A participant as the registry's directory describes it."""

    id: str
    role: str
    address: str
    signing_public_key: bytes
    certificate_thumbprint: str
    revoked: bool
    enrolled_at: int
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_message(cls, msg: common_pb2.Participant) -> PeerInfo:
        """From the wire form."""
        return cls(
            id=msg.id,
            role=msg.role,
            address=msg.address,
            signing_public_key=bytes(msg.signing_public_key),
            certificate_thumbprint=msg.certificate_thumbprint,
            revoked=msg.revoked,
            enrolled_at=msg.enrolled_at,
            attributes=dict(msg.attributes),
        )


class RegistryClient:
    """Token, directory and revocation list from the operator registry."""

    def __init__(
        self,
        *,
        address: str,
        space: str,
        operator_id: str,
        issuer: str,
        tls: TlsIdentity,
        operator_key: ed25519.Ed25519PublicKey,
        clock: Clock,
        token_refresh_fraction: float = 0.7,
        revocation_max_age_seconds: float = 300.0,
        call_timeout_seconds: float = 5.0,
    ) -> None:
        self._space = space
        self._operator_id = operator_id
        self._issuer = issuer
        self._operator_key = operator_key
        self._clock = clock
        self._refresh_fraction = token_refresh_fraction
        self._max_age = revocation_max_age_seconds
        self._timeout = call_timeout_seconds
        self._lock = threading.Lock()
        self._token: tuple[str, float, int] | None = None  # token, fetched at, expires at
        self._revocations: RevocationList | None = None
        self._refused = ""
        """Why the registry last refused this connector itself (revoked by the operator),
        until a refresh succeeds: what a stale list then means, instead of "unreachable"."""
        self._channel = open_channel(address, tls, space=space, peer=operator_id)
        self._member_channel = open_channel(
            address, tls, space=space, peer=operator_id, token=self.token
        )
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._member_stub = registry_pb2_grpc.RegistryServiceStub(self._member_channel)

    # -- membership token -------------------------------------------------------------

    def _token_due(self, now: float) -> bool:
        if self._token is None:
            return True
        _, fetched, expires = self._token
        return now >= fetched + (expires - fetched) * self._refresh_fraction

    @contextlib.contextmanager
    def _asking(self) -> Iterator[None]:
        """``calling("registry")``, remembering a refusal of this connector itself."""
        try:
            with calling("registry"):
                yield
        except AuthenticationError as exc:
            self._refused = str(exc)
            raise
        self._refused = ""

    def refresh_token(self) -> int:
        """Fetch a new membership token now; return its expiry."""
        with self._asking():
            resp = self._stub.IssueToken(registry_pb2.IssueTokenRequest(), timeout=self._timeout)
        with self._lock:
            self._token = (resp.token, self._clock.now(), resp.expires_at)
        return int(resp.expires_at)

    def token(self) -> str:
        """The current membership token, refreshed when past its refresh point."""
        with self._lock:
            due = self._token_due(self._clock.now())
            held = self._token
        if due:
            try:
                self.refresh_token()
            except ConnectorError:
                # A still-valid token keeps working while the registry is briefly away.
                if held is None or self._clock.now() >= held[2]:
                    raise
                log.warning("token refresh failed; using the current token until it expires")
        with self._lock:
            assert self._token is not None
            return self._token[0]

    @property
    def token_expires_at(self) -> int:
        """Expiry of the held token (0 when none)."""
        with self._lock:
            return self._token[2] if self._token else 0

    # -- revocation list --------------------------------------------------------------

    def refresh_revocations(self) -> RevocationList:
        """Fetch and verify the revocation list; refuse one older than the one held."""
        with self._asking():
            resp = self._stub.GetRevocationList(
                registry_pb2.GetRevocationListRequest(), timeout=self._timeout
            )
        fresh = verify_revocation_list(
            resp.revocation_list, self._operator_key, issuer=self._issuer, space=self._space
        )
        with self._lock:
            held = self._revocations
            if held is not None and (
                fresh.serial < held.serial or fresh.issued_at < held.issued_at
            ):
                raise VerificationError(
                    f"registry served revocation list serial {fresh.serial} older than the "
                    f"held serial {held.serial}; keeping the held list"
                )
            self._revocations = fresh
        return fresh

    def current(self) -> RevocationList:
        """The revocation list in force; ``Unavailable`` if none or too old."""
        with self._lock:
            held = self._revocations
        if held is None:
            raise Unavailable("no revocation list from the registry yet; refusing calls")
        age = self._clock.now() - held.issued_at
        if age > self._max_age and self._refused:
            raise Unavailable(
                f"the revocation list is {int(age)} s old: the registry no longer serves this "
                f"connector ({self._refused}); refusing calls — ask the operator"
            )
        if age > self._max_age:
            raise Unavailable(
                f"the revocation list is {int(age)} s old (limit {int(self._max_age)} s): "
                "the registry is unreachable; refusing calls until it is fetched again"
            )
        return held

    @property
    def revocations_held(self) -> RevocationList | None:
        """The list held now, fresh or not (for status reports)."""
        with self._lock:
            return self._revocations

    # -- directory --------------------------------------------------------------------

    def lookup(self, participant_id: str) -> PeerInfo:
        """One participant from the directory."""
        with calling("registry"):
            resp = self._member_stub.Lookup(
                registry_pb2.LookupRequest(participant_id=participant_id), timeout=self._timeout
            )
        return PeerInfo.from_message(resp.participant)

    def list_participants(self, role: str = "") -> list[PeerInfo]:
        """Participants of the directory, optionally of one role."""
        with calling("registry"):
            resp = self._member_stub.ListParticipants(
                registry_pb2.ListParticipantsRequest(role=role), timeout=self._timeout
            )
        return [PeerInfo.from_message(p) for p in resp.participants]

    def register_product(self, product_json: str, public: bool) -> str:
        """List one of our products in the catalog index; return its registration code."""
        with calling("registry"):
            resp = self._member_stub.RegisterProduct(
                registry_pb2.RegisterProductRequest(product_json=product_json, public=public),
                timeout=self._timeout,
            )
        return str(resp.registration_code)

    def search_catalog(self, text: str = "", tag: str = "") -> list[registry_pb2.CatalogListing]:
        """Listings across providers that we may see."""
        with calling("registry"):
            resp = self._member_stub.SearchCatalog(
                registry_pb2.SearchCatalogRequest(text=text, tag=tag), timeout=self._timeout
            )
        return list(resp.listings)

    def list_grants(
        self, participant: str = "", *, include_revoked: bool = False
    ) -> list[registry_pb2.OperationGrant]:
        """Authorised-operation grants (public to members)."""
        with calling("registry"):
            resp = self._member_stub.ListGrants(
                registry_pb2.ListGrantsRequest(
                    participant_id=participant, include_revoked=include_revoked
                ),
                timeout=self._timeout,
            )
        return list(resp.grants)

    # -- background refresh -----------------------------------------------------------

    def refresh_all(self) -> None:
        """Refresh the revocation list and, when due, the token; log failures."""
        for what, action in (
            ("revocation list", self.refresh_revocations),
            ("membership token", self._refresh_token_if_due),
        ):
            try:
                action()
            except ConnectorError as exc:
                log.warning("refresh failed", extra={"what": what, "reason": str(exc)})

    def _refresh_token_if_due(self) -> None:
        with self._lock:
            due = self._token_due(self._clock.now())
        if due:
            self.refresh_token()

    def run_refresher(
        self, stop: threading.Event, interval: float, on_cycle: Callable[[], None] | None = None
    ) -> None:
        """Refresh until ``stop`` is set; retries sooner while nothing fresh is held."""
        while not stop.is_set():
            self.refresh_all()
            if on_cycle:
                on_cycle()
            with self._lock:
                ok = self._revocations is not None and self._token is not None
            stop.wait(interval if ok else min(interval, 1.0))

    def close(self) -> None:
        """Close both channels."""
        self._channel.close()
        self._member_channel.close()

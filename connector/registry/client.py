"""A connector's view of the registry: its own token, lookups, and the revocation list.

The client keeps a membership token and a verified revocation list, refreshing both before
they run out. The registry also pushes each new list over a stream the client holds open
(``watch_revocations``), so a revocation takes effect within a second or two; the periodic
refresh stays as the fallback while the stream is down. When no fresh list is held,
``current()`` raises ``Unavailable`` and the connector refuses calls: an unreachable
registry never means "nobody is revoked".

Peers are looked up in the operator-signed directory (``connector.registry.directory``),
refreshed in the background and kept in the connector's database, so calls under
agreements already made go on while the registry does not answer, until the directory
is older than its configured maximum.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import registry_pb2, registry_pb2_grpc
from connector.clock import Clock
from connector.errors import (
    AuthenticationError,
    ConnectorError,
    NotFound,
    Unavailable,
    VerificationError,
)
from connector.registry.directory import (
    Directory,
    PeerInfo,
    SignedDirectory,
    entries_digest,
    verify_directory,
    verify_directory_head,
)
from connector.registry.revocation import RevocationList, verify_revocation_list
from connector.rpc.channel import TlsIdentity, calling, open_channel

if TYPE_CHECKING:  # the database stack stays out of the CLI's imports
    from connector.registry.cache import DirectoryCache

__all__ = ["PeerInfo", "RegistryClient"]

log = logging.getLogger(__name__)

RevocationListener = Callable[[RevocationList, "RevocationList | None"], None]
"""Told of each newer revocation list: ``(fresh, before)``."""

# How often a lookup reads the directory head replicas store (seconds; see __init__).
_STORED_HEAD_CHECK_S = 0.25


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
        directory_cache: DirectoryCache | None = None,
        directory_refresh_seconds: float = 30.0,
        directory_max_age_seconds: float = 3600.0,
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
        self._revocation_listeners: list[RevocationListener] = []
        self._watching: Any = None  # the open WatchRevocations call, to cancel on stop
        self._cache = directory_cache
        self._directory_refresh = directory_refresh_seconds
        self._directory_max_age = directory_max_age_seconds
        self._directory: Directory | None = None  # the newest verified, as of the last read
        self._directory_failed_at = float("-inf")
        self._stored_seen = ""  # the last stored head verified here
        # When the cached head was last read from the database (monotonic): a lookup reads it
        # at most every ``_STORED_HEAD_CHECK_S`` (one read per call cost 0.5-0.65 ms on every
        # compute and DSP message); a replica's newer copy is seen that much later, which
        # beside a refresh interval of minutes changes nothing, and revocations do not wait
        # for it (they come through the revocation list held in memory).
        self._stored_checked_at = float("-inf")
        self._registry_error = ""
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
            except ConnectorError as exc:
                # A still-valid token keeps working while the registry is away; after
                # its expiry no cache can stand in: the registry alone issues tokens.
                now = self._clock.now()
                if held is None or now >= held[2]:
                    if held is None or not isinstance(exc, Unavailable):
                        raise
                    raise Unavailable(
                        f"the membership token expired {int(now - held[2])} s ago and the "
                        f"registry is unreachable to issue a new one: calls to other members "
                        f"fail until it answers ({exc})"
                    ) from None
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
        return self.apply_revocations(resp.revocation_list)

    def apply_revocations(self, signed: str) -> RevocationList:
        """Verify a signed list and hold it from now on; ``VerificationError`` (and the
        held list kept) for one not signed by the operator or older than the held one."""
        fresh = verify_revocation_list(
            signed, self._operator_key, issuer=self._issuer, space=self._space
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
            listeners = (
                list(self._revocation_listeners)
                if held is None or (fresh.serial > held.serial)
                else []
            )
        for listener in listeners:
            try:
                listener(fresh, held)
            except ConnectorError as exc:  # the list is held whatever a listener does
                log.warning("acting on a revocation list failed", extra={"reason": str(exc)})
        return fresh

    def on_revocations(self, listener: RevocationListener) -> None:
        """Call ``listener(fresh, before)`` on the thread that holds each newer revocation
        list (pushed by the registry or fetched), ``before`` being the list held until
        then (``None`` for the first)."""
        with self._lock:
            self._revocation_listeners.append(listener)

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

    def _verify(self, signed: SignedDirectory) -> Directory:
        return verify_directory(signed, self._operator_key, issuer=self._issuer, space=self._space)

    def _keep(self, found: Directory) -> Directory:
        """Hold ``found`` unless a newer one is held already; the one held after.

        Of two signed in the same second the one just verified wins: ``iat`` counts whole
        seconds, and an enrolment can fall between them.
        """
        with self._lock:
            if self._directory is None or found.issued_at >= self._directory.issued_at:
                self._directory = found
            return self._directory

    def _held_directory(self, recheck: bool = False) -> Directory | None:
        """The newest directory verified here or stored by a replica (``recheck``: read
        the stored head now, even if it was read less than ``_STORED_HEAD_CHECK_S`` ago).

        ``VerificationError`` when the stored copy does not verify: it is never used, and
        the next directory fetched replaces it.
        """
        with self._lock:
            held, seen = self._directory, self._stored_seen
        if self._cache is None:
            return held
        now = time.monotonic()
        if (
            not recheck
            and held is not None
            and now - self._stored_checked_at < _STORED_HEAD_CHECK_S
        ):
            return held
        head = self._cache.head()
        if head is None or head == seen or (held is not None and head == held.signed.head):
            # Nothing new stored: the next read can wait. (Only then: a stored copy that
            # does not verify is read, and refused, on every lookup until replaced.)
            self._stored_checked_at = now
            return held
        stored = self._cache.load()
        if stored is None:
            return held
        try:
            found = self._verify(stored)
        except VerificationError as exc:
            raise VerificationError(
                f"the directory cached in this connector's database does not verify ({exc}); "
                "refusing to use it: it is replaced when the registry answers again"
            ) from None
        with self._lock:
            self._stored_seen = stored.head
        self._stored_checked_at = now
        return self._keep(found)

    def _stored_is_newer(self, stored: SignedDirectory, fresh: Directory) -> bool:
        """Whether the cached pair is the operator's and newer than ``fresh`` (a replica
        stored it): then it stays."""
        try:
            head = verify_directory_head(
                stored.head, self._operator_key, issuer=self._issuer, space=self._space
            )
        except VerificationError:
            return False
        return head.issued_at > fresh.issued_at and entries_digest(stored.entries) == head.digest

    def refresh_directory(self) -> Directory:
        """Fetch, verify and keep the signed directory (only a new head when the entries
        held are current); refuse one older than the one held."""
        with self._lock:
            held = self._directory
        try:
            with calling("registry"):
                resp = self._member_stub.GetDirectory(
                    registry_pb2.GetDirectoryRequest(held_digest=held.digest if held else ""),
                    timeout=self._timeout,
                )
        except Unavailable as exc:
            with self._lock:
                self._directory_failed_at = time.monotonic()
                self._registry_error = str(exc)
            raise
        entries = resp.entries
        if not entries:  # ours are current: the head alone came
            if held is None:
                raise VerificationError("the registry sent a directory head without its entries")
            entries = held.signed.entries
        fresh = self._verify(SignedDirectory(resp.head, entries))
        if held is not None and fresh.issued_at < held.issued_at:
            raise VerificationError(
                f"the registry served a directory issued at {fresh.issued_at}, older than the "
                f"one held ({held.issued_at}); keeping the held one"
            )
        with self._lock:
            self._registry_error = ""
        if self._cache is not None:
            self._cache.save(
                fresh,
                lambda stored: self._stored_is_newer(stored, fresh),
                int(self._clock.now() * 1000),
            )
        return self._keep(fresh)

    def directory(self) -> Directory:
        """The directory peers are looked up in, fetched again when due.

        While the registry does not answer, the cached one serves until the operator
        signed it more than ``directory_max_age_seconds`` ago; then ``Unavailable``.
        """
        return self._directory_in_force()[0]

    def _directory_in_force(self) -> tuple[Directory, bool]:
        """``directory()``, and whether this call fetched it."""
        now = self._clock.now()
        refused: VerificationError | None = None
        try:
            held = self._held_directory()
        except VerificationError as exc:
            held, refused = None, exc
        if held is not None and now - held.issued_at < self._directory_refresh:
            return held, False
        with self._lock:
            # After a failed attempt, lookups use the cache for a few seconds instead of
            # each waiting for an unreachable registry again.
            since = time.monotonic() - self._directory_failed_at
            backing_off = since < min(self._directory_refresh, 5.0)
            reason = self._registry_error
        if not backing_off:
            try:
                return self.refresh_directory(), True
            except Unavailable as exc:
                reason = str(exc)
        if refused is not None:
            raise refused
        if held is None:
            raise Unavailable(
                f"the registry is unreachable and this connector has no cached directory yet; "
                f"calls to other members wait until it answers ({reason})"
            )
        age = now - held.issued_at
        if age > self._directory_max_age:
            raise Unavailable(
                f"the registry is unreachable and the cached directory is {int(age)} s old "
                f"(max {int(self._directory_max_age)}): calls to other members wait until "
                f"it answers ({reason})"
            )
        return held, False

    @property
    def directory_held(self) -> Directory | None:
        """The newest directory held, fresh or not (for status reports)."""
        try:
            return self._held_directory()
        except VerificationError:
            return None

    @property
    def directory_max_age(self) -> float:
        """How old the cached directory may grow while the registry does not answer."""
        return self._directory_max_age

    @property
    def registry_error(self) -> str:
        """Why the last attempt to reach the registry failed; empty after a success."""
        with self._lock:
            return self._registry_error

    def lookup(self, participant_id: str) -> PeerInfo:
        """One participant from the directory in force (see ``directory``).

        A participant the held revocation list names is returned revoked whatever the
        directory says: a cached directory never brings a revoked member back.
        """
        directory, fetched = self._directory_in_force()
        peer = directory.participants.get(participant_id)
        unreachable = ""
        if peer is None and not fetched:
            # Perhaps enrolled since: a replica may have stored a newer directory already.
            with contextlib.suppress(VerificationError):
                stored = self._held_directory(recheck=True)
                if stored is not None:
                    directory = stored
                    peer = directory.participants.get(participant_id)
        if peer is None and not fetched:
            # Still not there: look once more in a fresh directory.
            try:
                peer = self.refresh_directory().participants.get(participant_id)
            except Unavailable as exc:
                unreachable = str(exc)
        if peer is None and unreachable:
            # Not "no such participant": it may have enrolled since the cache was signed.
            age = int(self._clock.now() - directory.issued_at)
            raise Unavailable(
                f"participant {participant_id!r} is not in the cached directory ({age} s old) "
                f"and the registry is unreachable to look again ({unreachable})"
            )
        if peer is None:
            raise NotFound(f"participant {participant_id!r} is not in the directory")
        with self._lock:
            revocations = self._revocations
        if revocations is not None and participant_id in revocations.participants:
            peer = dataclasses.replace(peer, revoked=True)
        return peer

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

    def search_catalog_page(
        self, request: registry_pb2.SearchCatalogRequest
    ) -> registry_pb2.SearchCatalogResponse:
        """One page of the listings across providers that we may see."""
        with calling("registry"):
            resp: registry_pb2.SearchCatalogResponse = self._member_stub.SearchCatalog(
                request, timeout=self._timeout
            )
        return resp

    def search_catalog(self, text: str = "", tag: str = "") -> list[registry_pb2.CatalogListing]:
        """Every listing across providers that we may see, page after page."""
        listings: list[registry_pb2.CatalogListing] = []
        token = ""
        while True:
            resp = self.search_catalog_page(
                registry_pb2.SearchCatalogRequest(text=text, tag=tag, page_token=token)
            )
            listings.extend(resp.listings)
            token = resp.next_page_token
            if not token:
                return listings

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
        """Refresh the revocation list and, when due, the token and the directory; log
        failures (and keep the last for status reports)."""
        failed = ""
        for what, action in (
            ("revocation list", self.refresh_revocations),
            ("membership token", self._refresh_token_if_due),
            ("directory", self._refresh_directory_if_due),
        ):
            try:
                action()
            except ConnectorError as exc:
                failed = failed or str(exc)
                # The message says it all where extras are not shown (a plain handler).
                log.warning(
                    "refresh of the %s failed: %s",
                    what,
                    exc,
                    extra={"what": what, "reason": str(exc)},
                )
        with self._lock:
            self._registry_error = failed

    def _refresh_directory_if_due(self) -> None:
        try:
            held = self._held_directory()
        except VerificationError:
            held = None  # a copy that does not verify is replaced at once
        if held is None or self._clock.now() - held.issued_at >= self._directory_refresh:
            self.refresh_directory()

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
                ok = None not in (self._revocations, self._token, self._directory)
            stop.wait(interval if ok else min(interval, 1.0))

    def watch_revocations(self, stop: threading.Event, max_backoff: float) -> None:
        """Hold the registry's revocation stream open until ``stop``: apply each pushed list
        at once, skip (and log) one that does not verify, reconnect after a break with a
        backoff doubling up to ``max_backoff`` seconds."""
        backoff = 0.5
        while not stop.is_set():
            call = self._stub.WatchRevocations(registry_pb2.WatchRevocationsRequest())
            with self._lock:
                self._watching = call
            if stop.is_set():  # stop_watching ran before the call was stored
                self.stop_watching()
            try:
                for resp in call:
                    try:
                        self.apply_revocations(resp.revocation_list)
                        backoff = 0.5
                    except VerificationError as exc:
                        log.warning("pushed revocation list refused", extra={"reason": str(exc)})
            except grpc.RpcError as err:
                if not stop.is_set():
                    log.info(
                        "revocation stream broke; the periodic refresh covers until it is back",
                        extra={"reason": f"{err.code().name}: {err.details()}"},
                    )
            finally:
                with self._lock:
                    self._watching = None
            stop.wait(backoff)
            backoff = min(backoff * 2, max_backoff)

    def stop_watching(self) -> None:
        """End the revocation stream now (``watch_revocations`` returns once ``stop`` is set)."""
        with self._lock:
            call = self._watching
        if call is not None:
            call.cancel()

    def close(self) -> None:
        """Close both channels."""
        self.stop_watching()
        self._channel.close()
        self._member_channel.close()

"""Services every connector serves: ``PeerService`` (members) and ``AdminService`` (admin)."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connector import __version__
from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc, peer_pb2, peer_pb2_grpc
from connector.catalog.catalog import Catalog, Description
from connector.catalog.paging import (
    Filters,
    Listed,
    PageLimits,
    PageReader,
    PageTokens,
    page_size,
    take_page,
)
from connector.consent.admin import ConsentAdmin
from connector.errors import InvalidRequest, PreconditionFailed
from connector.negotiation.history import Transition
from connector.negotiation.negotiator import Negotiator
from connector.negotiation.states import State
from connector.negotiation.store import Negotiation, page_position
from connector.registry.revocation import RevocationList
from connector.rpc.auth import Access, current_caller
from connector.rpc.server import Service
from connector.transfer.admin import TransferAdmin

__all__ = ["AdminServicer", "NodeStatus", "PeerServicer", "admin_service", "peer_service"]

T = TypeVar("T")

# A waiting GetNegotiation holds one of the server's worker threads: keep the hold short.
MAX_WAIT_MS = 30_000


@dataclass(frozen=True)
class NodeStatus:
    """What ``GetStatus`` reports, gathered at call time."""

    token_expires_at: int
    revocations: RevocationList | None
    directory_issued_at: int = 0
    directory_max_age_seconds: int = 0
    registry_error: str = ""


class PeerServicer(peer_pb2_grpc.PeerServiceServicer):
    """Answers pings from other members with the identity it verified for them."""

    def __init__(self, participant: str, role: str) -> None:
        self._participant = participant
        self._role = role

    def Ping(self, request: peer_pb2.PingRequest, context: Any) -> peer_pb2.PingResponse:
        """Echo the verified caller."""
        caller = current_caller()
        return peer_pb2.PingResponse(
            responder_id=self._participant,
            responder_role=self._role,
            caller_id=caller.participant,
            caller_role=caller.role,
        )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """The participant's own administration of its connector."""

    def __init__(
        self,
        participant: str,
        role: str,
        space: str,
        status: Callable[[bool], NodeStatus],
        catalog: Catalog,
        negotiator: Negotiator,
        registrar: Callable[[str, bool], str] | None = None,
        transfers: TransferAdmin | None = None,
        consents: ConsentAdmin | None = None,
        disclosure: Callable[[int], dict[str, Any]] | None = None,
        send_inline: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        pages: tuple[PageTokens, PageLimits] | None = None,
        transitions: Callable[[Negotiation], list[Transition]] | None = None,
    ) -> None:
        """``pages``: the key of the admin lists' page tokens and the page sizes (without
        it a fresh random key, tokens then hold for this process only, and the defaults)."""
        self._page_tokens, self._page_limits = pages or (
            PageTokens(AESGCM.generate_key(256), "admin"),
            PageLimits(),
        )
        self._send_inline = send_inline
        self._transitions = transitions
        self._consents = consents
        self._disclosure = disclosure
        self._registrar = registrar
        self._transfers = transfers
        self._catalog = catalog
        self._negotiator = negotiator
        self._participant = participant
        self._role = role
        self._space = space
        self._status = status

    def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: Any
    ) -> admin_pb2.GetStatusResponse:
        """Identity, token and revocation-list state of this connector."""
        status = self._status(request.refresh)
        rl = status.revocations
        return admin_pb2.GetStatusResponse(
            participant_id=self._participant,
            role=self._role,
            space=self._space,
            token_expires_at=status.token_expires_at,
            revocation_list_serial=rl.serial if rl else 0,
            revocation_list_issued_at=rl.issued_at if rl else 0,
            directory_issued_at=status.directory_issued_at,
            directory_max_age_seconds=status.directory_max_age_seconds,
            registry_error=status.registry_error,
            version=__version__,
        )

    def AddProduct(
        self, request: admin_pb2.AddProductRequest, context: Any
    ) -> admin_pb2.AddProductResponse:
        """Publish a product from its description, or a batch of them (all or none)."""
        if request.batch and request.description:
            raise InvalidRequest("give description or batch, not both")
        given = request.batch or [
            admin_pb2.ProductDescription(
                description=request.description,
                format=request.format,
                base_dir=request.base_dir,
            )
        ]
        descriptions = []
        for d in given:
            fmt = d.format or "auto"
            if fmt not in ("auto", "toml", "json"):
                raise InvalidRequest("format must be toml, json or empty")
            descriptions.append(Description(d.description, fmt, d.base_dir, d.name))
        products = self._catalog.publish_many(descriptions, replace=request.replace)
        return admin_pb2.AddProductResponse(
            product_json=products[0].to_json(),
            products_json=[p.to_json() for p in products] if request.batch else [],
        )

    def RemoveProduct(
        self, request: admin_pb2.RemoveProductRequest, context: Any
    ) -> admin_pb2.RemoveProductResponse:
        """Withdraw a product."""
        self._catalog.remove(request.product_id)
        return admin_pb2.RemoveProductResponse()

    def RegisterProduct(self, request: Any, context: Any) -> admin_pb2.AddProductResponse:
        """List a product with the registry (public data gets a registration code)."""
        if self._registrar is None:
            raise PreconditionFailed("this connector has no registry to list products with")
        product = self._catalog.register(request.product_id, request.public, self._registrar)
        return admin_pb2.AddProductResponse(product_json=product.to_json())

    def StartNegotiation(self, request: Any, context: Any) -> admin_pb2.NegotiationInfo:
        """As a consumer, ask a provider for a contract; with ``wait_ms``, its outcome."""
        terms = (request.provider, request.product_id, request.offer_id, request.purpose)
        start = functools.partial(self._negotiator.start, peer_address=request.dsp_url)
        if not request.wait_ms:
            return negotiation_info(start(*terms))
        deadline = time.monotonic() + min(request.wait_ms, MAX_WAIT_MS) / 1000
        # This thread waits anyway: it carries the request, and the countersignature the
        # answer leads to, itself. An agreement that needs approval arrives later, by a
        # call from the provider, and the wait below sees it.
        with self._send_inline():
            n = start(*terms)
        left = max(0.0, deadline - time.monotonic())
        return negotiation_info(self._negotiator.wait_final(n.pid, left))

    @property
    def _max_page(self) -> int:
        return self._page_limits.max_size

    def _page(
        self, request: Any, listing: str, reader: PageReader[Listed[T]]
    ) -> tuple[list[T], str] | None:
        """One page of an admin list when ``request`` asks for paging (``page_size`` or
        ``page_token``), else ``None``: the whole list, as callers before paging expect.

        The tokens are bound to ``listing``, which names the list and its filters: a token
        from another list or other filters is refused (``InvalidRequest``)."""
        if not request.HasField("page_size") and not request.page_token:
            return None
        # 0 asks for the default size: how a caller says "paged" without knowing the limits.
        size = page_size(request.page_size or None, self._page_limits)
        rows, following = take_page(
            reader,
            bound=f"admin\0{listing}",
            filters=Filters(),
            size=size,
            token=request.page_token,
            tokens=self._page_tokens,
            limits=self._page_limits,
        )
        return [r.item for r in rows], following

    def ListNegotiations(self, request: Any, context: Any) -> admin_pb2.ListNegotiationsResponse:
        """Negotiations, filtered, newest first; paged when asked."""
        try:
            _ = State(request.state) if request.state else None
        except ValueError:
            raise InvalidRequest(f"unknown state {request.state!r}") from None
        filters = (request.state, request.pending_approval, request.agreements)

        def reader(after: Sequence[str], limit: int) -> list[Listed[admin_pb2.NegotiationInfo]]:
            found = self._negotiator.page(after, limit, *filters)
            infos = [(page_position(n), negotiation_info(n)) for n in found]
            return [Listed(at, info.ByteSize(), info) for at, info in infos]

        paged = self._page(request, "negotiations\0" + json.dumps(filters), reader)
        if paged is not None:
            return admin_pb2.ListNegotiationsResponse(
                negotiations=paged[0], next_page_token=paged[1], max_page_size=self._max_page
            )
        found = self._negotiator.list(*filters)
        return admin_pb2.ListNegotiationsResponse(negotiations=[negotiation_info(n) for n in found])

    def GetNegotiation(self, request: Any, context: Any) -> admin_pb2.NegotiationInfo:
        """One negotiation; with ``wait_ms``, once it is final (or when the wait ends); with
        ``with_transitions``, its transitions from the log."""
        if request.wait_ms:
            seconds = min(request.wait_ms, MAX_WAIT_MS) / 1000
            n = self._negotiator.wait_final(request.pid, seconds)
        else:
            n = self._negotiator.get(request.pid)
        info = negotiation_info(n)
        if request.with_transitions:
            if self._transitions is None:
                raise PreconditionFailed("this connector keeps no log of negotiations")
            info.transitions.extend(
                admin_pb2.NegotiationTransition(
                    from_state=t.start, to_state=t.to, time_ms=t.time_ms, log_index=t.log_index
                )
                for t in self._transitions(n)
            )
        return info

    def ApproveNegotiation(self, request: Any, context: Any) -> admin_pb2.NegotiationInfo:
        """As a provider, approve a waiting negotiation."""
        return negotiation_info(self._negotiator.approve(request.pid))

    def RejectNegotiation(self, request: Any, context: Any) -> admin_pb2.NegotiationInfo:
        """As a provider, reject a waiting negotiation."""
        return negotiation_info(self._negotiator.reject(request.pid, request.reason))

    def OfferNegotiation(self, request: Any, context: Any) -> admin_pb2.NegotiationInfo:
        """As a provider, answer a waiting request with a counter-offer."""
        n = self._negotiator.offer(request.pid, request.offer_id, request.purpose)
        return negotiation_info(n)

    def AcceptNegotiation(self, request: Any, context: Any) -> admin_pb2.NegotiationInfo:
        """As a consumer, accept the provider's offer."""
        return negotiation_info(self._negotiator.accept(request.pid))

    def CounterNegotiation(self, request: Any, context: Any) -> admin_pb2.NegotiationInfo:
        """As a consumer, answer the provider's offer with a counter-request."""
        n = self._negotiator.counter(request.pid, request.offer_id, request.purpose)
        return negotiation_info(n)

    def TerminateNegotiation(self, request: Any, context: Any) -> admin_pb2.NegotiationInfo:
        """End a negotiation that is not final."""
        return negotiation_info(self._negotiator.terminate(request.pid, request.reason))

    def RevokeAgreement(self, request: Any, context: Any) -> admin_pb2.NegotiationInfo:
        """As a provider, revoke a finalized agreement."""
        return negotiation_info(self._negotiator.revoke(request.agreement_id, request.reason))

    def ListOwnProducts(
        self, request: admin_pb2.ListOwnProductsRequest, context: Any
    ) -> admin_pb2.ListOwnProductsResponse:
        """The products this connector publishes, by id; paged when asked."""
        paged = self._page(request, "products", self._catalog.own_after)
        if paged is not None:
            return admin_pb2.ListOwnProductsResponse(
                products_json=[p.to_json() for p in paged[0]],
                next_page_token=paged[1],
                max_page_size=self._max_page,
            )
        return admin_pb2.ListOwnProductsResponse(
            products_json=[p.to_json() for p in self._catalog.own_products()]
        )

    # -- transfers ----------------------------------------------------------------------

    def _transfer_admin(self) -> TransferAdmin:
        if self._transfers is None:
            raise PreconditionFailed("the operator registry moves no data")
        return self._transfers

    def Transfer(
        self, request: admin_pb2.TransferRequest, context: Any
    ) -> Iterator[admin_pb2.TransferProgress]:
        """Receive a product under an agreement, with progress."""
        yield from self._transfer_admin().transfer(request)

    def ListTransfers(
        self, request: admin_pb2.ListTransfersRequest, context: Any
    ) -> admin_pb2.ListTransfersResponse:
        """Transfers and holdings, newest first; paged when asked."""
        admin = self._transfer_admin()
        filters = json.dumps([request.role, request.holdings])
        paged = self._page(
            request, "transfers\0" + filters, lambda after, n: admin.page(request, after, n)
        )
        if paged is not None:
            return admin_pb2.ListTransfersResponse(
                transfers=paged[0], next_page_token=paged[1], max_page_size=self._max_page
            )
        return admin.list(request)

    def ReadHolding(
        self, request: admin_pb2.ReadHoldingRequest, context: Any
    ) -> Iterator[admin_pb2.HoldingChunk]:
        """A holding's bytes."""
        yield from self._transfer_admin().read(request)

    def TerminateTransfer(
        self, request: admin_pb2.TerminateOwnTransferRequest, context: Any
    ) -> admin_pb2.TransferInfo:
        """End a transfer."""
        return self._transfer_admin().terminate(request)

    def SuspendTransfer(
        self, request: admin_pb2.TransferControlRequest, context: Any
    ) -> admin_pb2.TransferInfo:
        """Suspend a transfer run over the Dataspace Protocol."""
        return self._transfer_admin().suspend(request)

    def ResumeTransfer(
        self, request: admin_pb2.TransferControlRequest, context: Any
    ) -> admin_pb2.TransferInfo:
        """Resume a transfer this side suspended."""
        return self._transfer_admin().resume(request)

    def TransferActivity(
        self, request: admin_pb2.TransferActivityRequest, context: Any
    ) -> admin_pb2.TransferActivityResponse:
        """Transfers per day and the streams' recent rate, for the console's charts."""
        return self._transfer_admin().activity(request.days)

    def MeteringReport(
        self, request: admin_pb2.MeteringReportRequest, context: Any
    ) -> admin_pb2.MeteringReportResponse:
        """The provider's metering, by consumer then agreement; paged when asked."""
        admin = self._transfer_admin()
        paged = self._page(request, "metering", admin.metering_page)
        if paged is not None:
            return admin_pb2.MeteringReportResponse(
                agreements=paged[0], next_page_token=paged[1], max_page_size=self._max_page
            )
        return admin.metering()

    def _consent_admin(self) -> ConsentAdmin:
        if self._consents is None:
            raise PreconditionFailed("this connector keeps no consent register")
        return self._consents

    def GrantConsent(
        self, request: admin_pb2.GrantConsentRequest, context: Any
    ) -> admin_pb2.ConsentInfo:
        """As an individual: give consent."""
        return self._consent_admin().grant(request)

    def WithdrawConsent(
        self, request: admin_pb2.WithdrawConsentRequest, context: Any
    ) -> admin_pb2.ConsentInfo:
        """As an individual: withdraw consent (agreements resting on it are revoked)."""
        return self._consent_admin().withdraw(request)

    def ListConsents(
        self, request: admin_pb2.ListConsentsRequest, context: Any
    ) -> admin_pb2.ListConsentsResponse:
        """Consents given."""
        return self._consent_admin().list(request)

    def DisclosureReport(
        self, request: admin_pb2.DisclosureReportRequest, context: Any
    ) -> admin_pb2.DisclosureReportResponse:
        """Public data released to authorised operators in one year."""
        if self._disclosure is None:
            raise PreconditionFailed("this connector releases no public data")
        report = self._disclosure(request.period)
        return admin_pb2.DisclosureReportResponse(
            report_json=json.dumps(report, sort_keys=True, ensure_ascii=False)
        )


def peer_service(servicer: PeerServicer) -> Service:
    """``PeerService`` with its access table."""
    return Service(
        "tds.v1.PeerService",
        peer_pb2_grpc.add_PeerServiceServicer_to_server,
        servicer,
        {"Ping": Access.MEMBER},
    )


ADMIN_METHODS = [
    "GetStatus",
    "AddProduct",
    "RemoveProduct",
    "ListOwnProducts",
    "RegisterProduct",
    "StartNegotiation",
    "ListNegotiations",
    "GetNegotiation",
    "ApproveNegotiation",
    "RejectNegotiation",
    "OfferNegotiation",
    "AcceptNegotiation",
    "CounterNegotiation",
    "TerminateNegotiation",
    "RevokeAgreement",
    "Transfer",
    "ListTransfers",
    "ReadHolding",
    "TerminateTransfer",
    "SuspendTransfer",
    "ResumeTransfer",
    "MeteringReport",
    "TransferActivity",
    "GrantConsent",
    "WithdrawConsent",
    "ListConsents",
    "DisclosureReport",
]


def negotiation_info(n: Negotiation) -> admin_pb2.NegotiationInfo:
    """The admin's view of a negotiation."""
    return admin_pb2.NegotiationInfo(
        pid=n.pid,
        role=n.role,
        counterparty=n.counterparty,
        counterparty_pid="" if n.counterparty_pid.startswith("pending:") else n.counterparty_pid,
        product_id=n.product,
        offer_id=n.offer,
        purpose=n.purpose,
        state=n.state.value,
        reasons=list(n.reasons),
        agreement_id=n.agreement_id or "",
        agreement=n.agreement or "",
        revocation=n.revocation or "",
        created_ms=n.created_ms,
        updated_ms=n.updated_ms,
    )


def admin_service(servicer: AdminServicer) -> Service:
    """``AdminService`` with its access table."""
    return Service(
        "tds.v1.AdminService",
        admin_pb2_grpc.add_AdminServiceServicer_to_server,
        servicer,
        dict.fromkeys(ADMIN_METHODS, Access.ADMIN),
    )

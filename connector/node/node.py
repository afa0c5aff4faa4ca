"""A running connector or registry, assembled from its configuration."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector import speedups
from connector._proto.tds.v1 import catalog_pb2, catalog_pb2_grpc, registry_pb2
from connector.audit.checkpoint import log_origin
from connector.audit.log import TransparencyLog
from connector.audit.service import AuditServicer, audit_service
from connector.catalog.catalog import Catalog
from connector.catalog.paging import PageTokens, page_limits
from connector.catalog.service import CatalogServicer, catalog_service
from connector.catalog.store import ProductStore
from connector.clock import Clock, SystemClock
from connector.compute.client import CONFIRM_METHOD, ComputeConsumer
from connector.compute.service import ComputeProvider, ComputeServicer, compute_service
from connector.compute.sources import ComputeSources
from connector.compute.store import ComputationStore
from connector.config import Config
from connector.consent.admin import ConsentAdmin
from connector.consent.register import ConsentRegister
from connector.errors import (
    ConfigError,
    ConnectorError,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
)
from connector.identity.certs import (
    certificate_name,
    load_certificate,
    load_ed25519_private_key,
    load_ed25519_public_key,
    load_tls_private_key,
    raw_public_key,
    read_file_bytes,
)
from connector.identity.names import participant_uri
from connector.negotiation.history import transitions
from connector.negotiation.negotiator import DSP_METHOD, Negotiator
from connector.negotiation.outbox import Outbox, Pending
from connector.negotiation.service import (
    Delivery,
    NegotiationServicer,
    PermanentRefusal,
    negotiation_service,
)
from connector.negotiation.store import NegotiationStore
from connector.node.services import (
    AdminServicer,
    NodeStatus,
    PeerServicer,
    admin_service,
    peer_service,
)
from connector.policy.factory import engine_from_config
from connector.policy.library import load_library
from connector.policy.point import PolicyPoint
from connector.registry.cache import DirectoryCache
from connector.registry.client import RegistryClient
from connector.registry.grants import GrantStore
from connector.registry.index import CatalogIndex
from connector.registry.revocation import RevocationList
from connector.registry.service import (
    LocalRevocations,
    OperatorKeys,
    RegistryServicer,
    registry_service,
)
from connector.registry.store import SqlDirectoryStore
from connector.rpc.auth import Authenticator, RevocationSource
from connector.rpc.channel import TlsIdentity, calling, open_channel
from connector.rpc.server import ServerHandle, Service, build_server
from connector.sources.file import SourceRoots
from connector.sources.sql import SqlSources
from connector.sources.streams import StreamSources
from connector.store.database import Database, RawTransaction, open_database
from connector.transfer.admin import TransferAdmin
from connector.transfer.consumer import TransferConsumer
from connector.transfer.disclosure import DisclosureTally, disclosure_report
from connector.transfer.disclosure_store import DisclosureStore
from connector.transfer.holdings import HoldingsSweeper
from connector.transfer.provider import ProviderSettings, TransferProvider
from connector.transfer.service import TransferServicer, transfer_service
from connector.transfer.store import PROVIDER, Transfer, TransferStore
from connector.transfer.stream_service import StreamServicer, stream_service
from connector.transfer.stream_store import StreamStore
from connector.transfer.streaming import StreamProvider
from connector.transfer.subscriber import StreamConsumer

if TYPE_CHECKING:
    # aiohttp and pyld load only when [dsp] listen is set (about 50 MB resident).
    from connector.dsp import DspBinding
    from connector.dsp.delivery import DspDelivery
    from connector.dsp.transfer_delivery import DspTransfers

__all__ = ["Node", "TlsMaterial"]

log = logging.getLogger(__name__)

TRANSFER_METHOD = DSP_METHOD + "Transfer"
"""Outbox methods of DSP transfer messages (connector.dsp.transfers.TRANSFER_METHOD, not
imported from there: that would load aiohttp for connectors that serve no binding)."""


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes a node serves and calls with, checked at load."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def identity(self) -> TlsIdentity:
        """As a client identity."""
        return TlsIdentity(self.ca_pem, self.cert_pem, self.key_pem)


def _load_tls(cfg: Config) -> TlsMaterial:
    pki = cfg.pki
    load_certificate(pki.ca_cert, "pki.ca_cert")
    cert = load_certificate(pki.tls_cert, "pki.tls_cert")
    load_tls_private_key(pki.tls_key)
    try:
        name = certificate_name(cert)
    except ConnectorError as exc:
        raise ConfigError(f"pki.tls_cert {pki.tls_cert}: {exc}") from None
    expected = participant_uri(cfg.participant.space, cfg.participant.id)
    if (name.space, name.kind, name.participant) != (
        cfg.participant.space,
        "participant",
        cfg.participant.id,
    ):
        raise ConfigError(f"pki.tls_cert {pki.tls_cert} does not name {expected}")
    return TlsMaterial(
        ca_pem=read_file_bytes(pki.ca_cert, "pki.ca_cert"),
        cert_pem=read_file_bytes(pki.tls_cert, "pki.tls_cert"),
        key_pem=read_file_bytes(pki.tls_key, "pki.tls_key"),
    )


# How long ``stop`` waits, in all, for the background threads to notice the stop event.
_THREADS_STOP_SECONDS = 2.0


class Node:
    """One connector (or the operator registry) serving over mutual TLS."""

    def __init__(self, cfg: Config, *, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.db: Database | None = None
        self.registry: RegistryClient | None = None
        self._handle: ServerHandle | None = None
        self.dsp: DspBinding | None = None
        """The Dataspace Protocol HTTPS binding, when ``[dsp] listen`` is configured."""
        self._stop = threading.Event()
        self._disclosure_tally = DisclosureTally()
        self._refresher: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._enrol_self: Callable[[str], None] | None = None
        self._checkpointer: threading.Thread | None = None
        self._disclosure_counter: threading.Thread | None = None
        self.log: TransparencyLog | None = None
        self.policy: PolicyPoint | None = None
        self.catalog: Catalog | None = None
        self.negotiator: Negotiator | None = None
        self.delivery: Delivery | None = None
        self.dsp_delivery: DspDelivery | None = None
        self.dsp_transfers: DspTransfers | None = None
        """Transfer processes over the DSP binding (when it is served)."""
        """Sends negotiation messages over the DSP binding (when it is served)."""
        self.outbox: Outbox | None = None
        self.transfers: TransferProvider | None = None
        self.receiver: TransferConsumer | None = None
        self.sweeper: HoldingsSweeper | None = None
        self.transfer_admin: TransferAdmin | None = None
        self.computations: ComputeProvider | None = None
        self.asker: ComputeConsumer | None = None
        self.stream_store: StreamStore | None = None
        self.stream_provider: StreamProvider | None = None
        self.stream_consumer: StreamConsumer | None = None
        self.consents: ConsentRegister | None = None
        self._sweeper_thread: threading.Thread | None = None
        self._tls: TlsMaterial | None = None
        self._keys: dict[str, tuple[float, ed25519.Ed25519PublicKey]] = {}
        self._keys_lock = threading.Lock()
        self._channels_lock = threading.Lock()
        self._kept_channels: dict[str, tuple[tuple[str, bytes], grpc.Channel]] = {}
        self._revocations: RevocationSource | None = None
        self.sql_sources = SqlSources(cfg.sources)
        """The databases products read from (pools open on first use, close on stop)."""
        self.stream_sources = StreamSources(cfg.sources, cfg.data_dir / "stream-journals")
        """The brokers stream products read from (MQTT clients kept until stop, their
        replay buffers journaled in the data directory)."""

    @property
    def issuer(self) -> str:
        """The ``iss`` of tokens in this space: the operator's participant URI."""
        return participant_uri(self.cfg.participant.space, self.cfg.registry.operator_id)

    @property
    def advertised_address(self) -> str:
        """host:port members reach this node at (``server.advertise`` or the bound listen)."""
        if self.cfg.server.advertise:
            return self.cfg.server.advertise
        host = self.cfg.server.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (after ``start``)."""
        if self._handle is None:
            raise RuntimeError("node not started")
        return self._handle.port

    def start(self) -> None:
        """Load key material, open the database, bind and start serving.

        Raises ``ConfigError`` for bad configuration or key material or a busy port, and
        ``Unavailable`` when the database cannot be opened.
        """
        cfg = self.cfg
        tls = _load_tls(cfg)
        self._tls = tls
        operator_key = load_ed25519_public_key(
            cfg.pki.operator_public_key, "pki.operator_public_key"
        )
        signing_key = load_ed25519_private_key(cfg.pki.signing_key, "pki.signing_key")
        self.db = open_database(cfg.database_url)
        self._disclosure_tally.store = DisclosureStore(self.db)
        self.log = TransparencyLog(
            self.db,
            origin=log_origin(cfg.participant.space, cfg.participant.id),
            actor=cfg.participant.id,
            signing_key=signing_key,
            clock=self.clock,
        )
        try:
            # The policy engine starts before the server: an OPA sidecar that is not
            # healthy stops the connector here, with the reason, instead of denying later.
            library = load_library(cfg.policy.policy_dir)
            engine = engine_from_config(cfg.policy, library)
            self.policy = PolicyPoint(engine, self.log)
            self.catalog = Catalog(
                participant=cfg.participant.id,
                store=ProductStore(self.db),
                library=library,
                engine=engine,
                policy=self.policy,
                audit=self.log,
                clock=self.clock,
                sources=SourceRoots(cfg.data_dir, cfg.transfer.source_roots),
                sql=self.sql_sources,
                page_tokens=PageTokens.from_signing_key(signing_key, "catalog"),
                page_limits=page_limits(cfg.catalog),
                streams=self.stream_sources,
            )
            self.negotiator = Negotiator(
                participant=cfg.participant.id,
                signing_key=signing_key,
                # Messages a transition queues go out the moment it commits.
                # And each marks what the outbox has delivered since the last one.
                store=NegotiationStore(
                    self.db, hand_over=self._dispatch, settle_in=self._settle_delivered
                ),
                catalog=self.catalog,
                policy=self.policy,
                audit=self.log,
                clock=self.clock,
                keys=self._signing_key_of,
                consent=self._consent_lookup,
                revoked=self._check_revoked,
                revocation_received=self._revocation_received,
                agreement_revoked=self._dsp_hook("agreement_revoked"),
            )
            self.consents = ConsentRegister(
                participant=cfg.participant.id,
                db=self.db,
                signing_key=signing_key,
                audit=self.log,
                clock=self.clock,
                product_tags=lambda pid: self._catalog().own(pid).tags,
            )
            self._build_transfers(signing_key)
            self.delivery = Delivery(self._negotiator, self._member_channel)
            self.outbox = Outbox(
                self.db,
                self._deliver,
                self.clock,
                on_give_up=self._gave_up,
                settle_later=True,  # with the negotiations' writes (_settle_delivered)
            )
            services, revocations = self._services(tls, operator_key, signing_key)
            self._revocations = revocations
            authenticator = Authenticator(
                space=cfg.participant.space,
                participant=cfg.participant.id,
                operator_key=operator_key,
                issuer=self.issuer,
                revocations=revocations,
                clock=self.clock,
                leeway_seconds=cfg.limits.clock_leeway_seconds,
            )
            self._handle = build_server(
                listen=cfg.server.listen,
                services=services,
                authenticator=authenticator,
                ca_pem=tls.ca_pem,
                cert_pem=tls.cert_pem,
                key_pem=tls.key_pem,
                max_workers=cfg.server.max_workers,
                max_message_bytes=cfg.server.max_message_bytes,
            )
            if cfg.dsp.listen:  # refused on the operator by the configuration
                from connector.dsp import DspBinding, tls_context
                from connector.dsp.transfer_delivery import DspTransfers

                assert self.transfers is not None and self.receiver is not None
                self.dsp_transfers = DspTransfers(
                    db=self.db,
                    provider=self.transfers,
                    receiver=self.receiver,
                    signing_key=signing_key,
                    clock=self.clock,
                    hand_over=self._dispatch,
                    registered_host=self._registered_host,
                )

                self.dsp = DspBinding(
                    settings=cfg.dsp,
                    participant=cfg.participant.id,
                    space=cfg.participant.space,
                    catalog=self.catalog,
                    negotiator=self.negotiator,
                    authenticator=authenticator,
                    tls=tls_context(cfg.pki.tls_cert, cfg.pki.tls_key, tls.ca_pem),
                    registered_host=self._registered_host,
                    workers=cfg.server.max_workers,
                    routes=(self.dsp_transfers.routes,),
                    hold=self._hold_messages,
                    release=self._dispatch,
                )
                self.dsp.start()
                self.dsp_delivery = self._dsp_delivery(tls, self.dsp)
                binding = self.dsp
                self.dsp_transfers.connect(self.dsp_delivery.sender, lambda: binding.base_url)
            if self._enrol_self is not None:
                self._enrol_self(self.advertised_address)
        except BaseException:
            if self.dsp is not None:
                self.dsp.stop()
            if self._handle is not None:
                self._handle.stop(0)
            self._close_clients()
            raise
        if self.outbox is not None and self.registry is not None:
            self.outbox.start()
        if self.asker is not None:
            self.asker.resume()  # countersignatures owed since before a restart
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="tds-checkpoints", daemon=True
        )
        self._checkpointer.start()
        self._sweeper_thread = threading.Thread(
            target=self._sweep_loop, name="tds-holdings-sweeper", daemon=True
        )
        self._sweeper_thread.start()
        if self.registry is not None:
            # The disclosure report's counts brought up to the log from the stored ones
            # (the first time, the year's receipts counted once), off the request path:
            # the first report after a start then reads stored counts.
            self._disclosure_counter = threading.Thread(
                target=self._count_disclosures, name="tds-disclosure-counts", daemon=True
            )
            self._disclosure_counter.start()
            self._refresher = threading.Thread(
                target=self.registry.run_refresher,
                args=(self._stop, cfg.registry.revocation_refresh_seconds),
                name="tds-registry-refresh",
                daemon=True,
            )
            self._refresher.start()
            # Revocations are pushed the moment the operator makes them; the refresher
            # above is the fallback while this stream is down.
            self._watcher = threading.Thread(
                target=self.registry.watch_revocations,
                args=(self._stop, cfg.registry.revocation_refresh_seconds),
                name="tds-revocation-watch",
                daemon=True,
            )
            self._watcher.start()
        log.info(
            "serving",
            extra={
                "participant": cfg.participant.id,
                "role": cfg.participant.role,
                "port": self.port,
                # Which databases products may read from, passwords hidden: what an
                # operator checks first when a transfer says a source is unreachable.
                "sources": {name: c.safe_url() for name, c in cfg.sources.items()},
                # Whether deliveries take the C speedups (connector/speedups.py): a
                # delivery twice as slow as expected is explained here.
                "delivery": speedups.status,
            },
        )

    def _services(
        self,
        tls: TlsMaterial,
        operator_key: ed25519.Ed25519PublicKey,
        signing_key: ed25519.Ed25519PrivateKey,
    ) -> tuple[list[Service], RevocationSource]:
        cfg, db = self.cfg, self.db
        assert db is not None
        services: list[Service] = [
            peer_service(PeerServicer(cfg.participant.id, cfg.participant.role))
        ]
        revocations: RevocationSource
        if cfg.is_operator:
            if raw_public_key(signing_key.public_key()) != raw_public_key(operator_key):
                raise ConfigError(
                    "pki.signing_key of the operator must match pki.operator_public_key"
                )
            store = SqlDirectoryStore(db)
            grants = GrantStore(db)
            local = LocalRevocations(store, self.clock, grants=grants)
            keys = OperatorKeys(
                space=cfg.participant.space,
                issuer=self.issuer,
                signing_key=signing_key,
                ca_certificate=load_certificate(cfg.pki.ca_cert, "pki.ca_cert"),
                token_ttl_seconds=cfg.registry.token_ttl_seconds,
            )
            assert self.policy is not None

            def confirm(provider: str, product_id: str) -> catalog_pb2.ProductSummary:
                # ``servicer`` is bound below, before any call can come in.
                return self._served_product(store, servicer, tls, provider, product_id)

            index = CatalogIndex(
                db,
                space=cfg.participant.space,
                policy=self.policy,
                audit=self._log(),
                clock=self.clock,
                confirm=confirm,
                page_tokens=PageTokens.from_signing_key(signing_key, "registry-index"),
                page_limits=page_limits(cfg.catalog),
            )
            servicer = RegistryServicer(
                store,
                keys,
                local,
                self.clock,
                self._log(),
                index,
                grants,
                stopping=self._stop,
                max_watchers=cfg.registry.max_watchers,
            )
            self._enrol_self = lambda address: self._enrol_operator(
                servicer, store, tls, signing_key, address
            )
            services.append(registry_service(servicer))
            revocations = local
        else:
            self.registry = RegistryClient(
                address=cfg.registry.address,
                space=cfg.participant.space,
                operator_id=cfg.registry.operator_id,
                issuer=self.issuer,
                tls=tls.identity,
                operator_key=operator_key,
                clock=self.clock,
                token_refresh_fraction=cfg.registry.token_refresh_fraction,
                revocation_max_age_seconds=cfg.registry.revocation_max_age_seconds,
                call_timeout_seconds=cfg.registry.call_timeout_seconds,
                directory_cache=DirectoryCache(db, cfg.participant.space),
                directory_refresh_seconds=cfg.registry.directory_refresh_seconds,
                directory_max_age_seconds=cfg.registry.directory_max_age_seconds,
            )
            self.registry.on_revocations(self._end_revoked_transfers)
            revocations = self.registry
        services.append(catalog_service(CatalogServicer(self._catalog())))
        services.append(negotiation_service(NegotiationServicer(self._negotiator())))
        assert self.transfers is not None and self.receiver is not None
        services.append(transfer_service(TransferServicer(self.transfers, self.receiver)))
        assert self.computations is not None and self.asker is not None
        services.append(compute_service(ComputeServicer(self.computations, self.asker)))
        assert self.stream_provider is not None and self.stream_consumer is not None
        assert self.stream_store is not None
        services.append(
            stream_service(
                StreamServicer(
                    self.stream_provider,
                    self.stream_consumer,
                    self.stream_store,
                    self._member_channel,
                )
            )
        )
        services.append(
            audit_service(
                AuditServicer(
                    self._log(),
                    cfg.participant.space,
                    self._signing_key_of,
                    revoked=lambda: self._is_revoked(cfg.participant.id),
                )
            )
        )
        services.append(
            admin_service(
                AdminServicer(
                    cfg.participant.id,
                    cfg.participant.role,
                    cfg.participant.space,
                    self.status,
                    self._catalog(),
                    self._negotiator(),
                    self.registry.register_product if self.registry is not None else None,
                    self.transfer_admin,
                    ConsentAdmin(
                        role=cfg.participant.role,
                        register=self._consent_register(),
                        negotiator=self._negotiator(),
                        negotiations=NegotiationStore(db),
                    ),
                    self._disclosure if self.registry is not None else None,
                    self._send_inline,
                    pages=(
                        PageTokens.from_signing_key(signing_key, "admin"),
                        page_limits(cfg.catalog),
                    ),
                    transitions=lambda n: transitions(self._log(), n),
                )
            )
        )
        return services, revocations

    def _build_transfers(self, signing_key: ed25519.Ed25519PrivateKey) -> None:
        cfg, db = self.cfg, self.db
        assert db is not None and self.policy is not None
        store = TransferStore(db)
        negotiations = NegotiationStore(db)
        secret = signing_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        self.transfers = TransferProvider(
            participant=cfg.participant.id,
            settings=ProviderSettings(
                data_dir=cfg.data_dir,
                chunk_size=cfg.transfer.chunk_bytes,
                mask_secret=secret,
                source_roots=cfg.transfer.source_roots,
            ),
            store=store,
            negotiations=negotiations,
            catalog=self._catalog(),
            policy=self.policy,
            audit=self._log(),
            clock=self.clock,
            signing_key=signing_key,
            keys=self._signing_key_of,
            revoked=self._revocation_stop,
            channel_to=self._member_channel,
            consent=self._consent_lookup,
            sql=self.sql_sources,
            ended=self._dsp_hook("transfer_ended"),
        )
        self.receiver = TransferConsumer(
            participant=cfg.participant.id,
            store=store,
            negotiations=negotiations,
            audit=self._log(),
            clock=self.clock,
            signing_key=signing_key,
            keys=self._signing_key_of,
            channel_to=self._member_channel,
            holdings_dir=cfg.data_dir / "holdings",
            max_chunk_bytes=cfg.server.max_message_bytes - 1024,
            resume_for_seconds=cfg.transfer.resume_seconds,
        )
        self.transfer_admin = TransferAdmin(
            store,
            self.transfers,
            self.receiver,
            dsp=lambda: self.dsp_transfers.consumer if self.dsp_transfers is not None else None,
            control=lambda: self.dsp_transfers,
        )
        computations = ComputationStore(db)
        self.computations = ComputeProvider(
            participant=cfg.participant.id,
            transfers=self.transfers,
            catalog=self._catalog(),
            policy=self.policy,
            store=computations,
            sources=ComputeSources(
                SourceRoots(cfg.data_dir, cfg.transfer.source_roots), sql=self.sql_sources
            ),
            audit=self._log(),
            clock=self.clock,
            signing_key=signing_key,
            keys=self._signing_key_of,
            consent=self._consent_lookup,
        )
        self.asker = ComputeConsumer(
            participant=cfg.participant.id,
            agreement_of=self.receiver.agreement_of,
            store=computations,
            audit=self._log(),
            clock=self.clock,
            signing_key=signing_key,
            keys=self._signing_key_of,
            channel_to=self._kept_member_channel,
            hand_over=self._dispatch,  # its confirmations go through the outbox
        )
        assert self.db is not None
        self.stream_store = StreamStore(self.db)
        # MQTT sources that numbered messages before this start take up their sessions.
        self.stream_sources.resume(self._catalog().own_products())
        self.stream_provider = StreamProvider(
            participant=cfg.participant.id,
            settings=cfg.stream,
            mask_secret=secret,
            store=self.stream_store,
            negotiations=negotiations,
            catalog=self._catalog(),
            policy=self.policy,
            audit=self._log(),
            clock=self.clock,
            signing_key=signing_key,
            keys=self._signing_key_of,
            sources=self.stream_sources,
            revoked=self._stream_revocation,
            consent=self._consent_lookup,
        )
        self.stream_consumer = StreamConsumer(
            participant=cfg.participant.id,
            store=self.stream_store,
            negotiations=negotiations,
            audit=self._log(),
            clock=self.clock,
            signing_key=signing_key,
            keys=self._signing_key_of,
            channel_to=self._member_channel,
            holdings_dir=cfg.data_dir / "holdings",
            sweep=self._sweep_agreement,
        )
        self.sweeper = HoldingsSweeper(
            store=store,
            negotiations=negotiations,
            audit=self._log(),
            clock=self.clock,
            holdings_dir=cfg.data_dir / "holdings",
            streams=self.stream_store,
            delete_stream=self.stream_consumer.delete,
        )

    def _consent_register(self) -> ConsentRegister:
        if self.consents is None:
            raise RuntimeError("node not started")
        return self.consents

    def _check_revoked(self, participant: str, certificate_serial: int) -> None:
        """``AuthenticationError`` if the operator revoked either; ``Unavailable`` when no
        fresh revocation list is held (the caller then fails closed)."""
        if self._revocations is None:
            raise Unavailable("the connector has no revocation list yet")
        self._revocations.current().check(participant, certificate_serial)

    def _consent_lookup(self, recipient: str, product: str, purpose: str) -> dict[str, Any]:
        """The consent register's answer for a decision about personal data."""
        return self._consent_register().lookup(recipient, product, purpose)

    def _disclosure(self, year: int) -> dict[str, Any]:
        assert self.db is not None and self.registry is not None
        return disclosure_report(
            provider=self.cfg.participant.id,
            year=year,
            log=self._log(),
            negotiations=NegotiationStore(self.db),
            transfers=TransferStore(self.db),
            grants=lambda: self._registry().list_grants(include_revoked=True),
            tally=self._disclosure_tally,
        )

    def _count_disclosures(self) -> None:
        """This year's disclosure counts brought up to the log and stored."""
        assert self.db is not None
        try:
            self._disclosure_tally.count_on(
                provider=self.cfg.participant.id,
                year=time.gmtime().tm_year,
                log=self._log(),
                negotiations=NegotiationStore(self.db),
            )
        except Exception as exc:
            # Stopping closes the database under a count still running: nothing to report.
            if not self._stop.is_set():
                log.warning("disclosure counts not brought up to date", extra={"reason": str(exc)})

    def _registry(self) -> RegistryClient:
        if self.registry is None:
            raise Unavailable("the operator registry has no registry client")
        return self.registry

    def _is_revoked(self, participant: str) -> bool:
        """Whether the revocation list in force names ``participant`` (no list: revoked)."""
        if self.registry is None:
            return False  # the operator moves no data
        return participant in self.registry.current().participants

    def _revocation_stop(self, t: Transfer) -> str | None:
        """Why the revocation list in force stops a running transfer we provide, or None:
        its consumer is revoked, or (for public data, 公共数据授权运营) a grant of the
        consumer was revoked since it started. Which grant the decision relied on is not
        kept, so any grant of the consumer stops it: fail closed, and a new transfer is
        decided afresh. ``Unavailable`` when no fresh list is held."""
        return self._stream_revocation(t.counterparty, t.product, t.started_ms)

    def _end_revoked_transfers(self, fresh: RevocationList, before: RevocationList | None) -> None:
        """A newer revocation list ends at once every transfer we provide that it stops (a
        consumer it revokes, or whose grant it revokes for public data): recorded and
        logged as terminated, and over DSP the consumer is told, as when our admin stops
        one. Its pulls were refused from the moment the list was held; this ends the
        records too, rather than at a next pull that may never come. The first list held
        after a start is compared with nothing: a pull still checks it."""
        if before is None or self.transfers is None or self.db is None:
            return
        newly = (fresh.participants - before.participants) | {
            g.participant for g in fresh.grants - before.grants
        }
        for t in TransferStore(self.db).active_with(PROVIDER, newly):
            reason = self._revocation_stop(t)
            if reason:
                with contextlib.suppress(PreconditionFailed):  # ended meanwhile
                    self.transfers.terminate(t.id, reason)

    def _stream_revocation(self, consumer: str, product: str, started_ms: int) -> str | None:
        """:meth:`_revocation_stop` for anything ``consumer`` receives of ``product`` since
        ``started_ms`` (a transfer or a stream)."""
        if self.registry is None:
            return None  # the operator moves no data
        held = self.registry.current()
        if consumer in held.participants:
            return "consumer_revoked"
        # The operator's clock stamps the revocation, ours the start: allow for skew.
        since_ms = started_ms - self.cfg.limits.clock_leeway_seconds * 1000
        if held.grant_revoked_since(consumer, since_ms) and (
            self._catalog().own(product).registration_code
        ):
            return "operation_grant_revoked"
        return None

    def _sweep_agreement(self, agreement_id: str) -> None:
        """The holdings sweep of one agreement, now (a provider stopped its stream)."""
        if self.sweeper is not None:
            self.sweeper.sweep(agreement_id)

    def _revocation_received(self, agreement_id: str) -> None:
        """A provider's signed revocation arrived: what it deletes goes now, not at the
        next periodic sweep."""
        if self.sweeper is not None:
            self.sweeper.sweep_soon(agreement_id)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.cfg.transfer.sweep_interval_seconds):
            if self.sweeper is None:
                continue
            try:
                self.sweeper.sweep()
            except ConnectorError as exc:
                log.warning("holdings sweep failed", extra={"reason": str(exc)})
            if self.transfers is not None:
                try:
                    self.transfers.sweep_staging()
                except (ConnectorError, OSError) as exc:
                    log.warning("staging sweep failed", extra={"reason": str(exc)})

    def _enrol_operator(
        self,
        servicer: RegistryServicer,
        store: SqlDirectoryStore,
        tls: TlsMaterial,
        signing_key: ed25519.Ed25519PrivateKey,
        address: str,
    ) -> None:
        """List the operator in its own directory, so members can find its keys."""
        request = registry_pb2.EnrolRequest(
            participant_id=self.cfg.participant.id,
            role=self.cfg.participant.role,
            address=address,
            tls_certificate_pem=tls.cert_pem.decode(),
            signing_public_key=raw_public_key(signing_key.public_key()),
        )
        entry = servicer.validate_enrolment(request)
        try:
            held = store.get(entry.id)
        except NotFound:
            held = None
        if (
            held is None
            or held.certificate_thumbprint != entry.certificate_thumbprint
            or held.address != entry.address
        ):
            store.enrol(entry, replace=held is not None, now=int(self.clock.now()))

    def _dsp_delivery(self, tls: TlsMaterial, binding: DspBinding) -> DspDelivery:
        from connector.dsp.delivery import DspDelivery, DspSender

        registry = self.registry
        assert registry is not None  # the operator serves no DSP (refused by the config)
        return DspDelivery(
            negotiator=self._negotiator,
            sender=DspSender(
                identity=tls.identity, space=self.cfg.participant.space, token=registry.token
            ),
            callback=lambda: binding.base_url,
            registered_host=self._registered_host,
            space=self.cfg.participant.space,
        )

    def _deliver(self, pending: Pending) -> bool | None:
        """One outbox message: a computation's confirmation, a DSP transfer's message, or a
        negotiation's message over the binding the negotiation runs on."""
        if pending.method == CONFIRM_METHOD:
            assert self.asker is not None
            return self.asker.deliver(pending)
        if pending.method.startswith(TRANSFER_METHOD) and self.dsp_transfers is not None:
            return self.dsp_transfers.deliver(pending)
        if pending.method.startswith(DSP_METHOD):
            if self.dsp_delivery is None:
                raise PermanentRefusal(
                    "this connector serves no Dataspace Protocol binding ([dsp] listen): "
                    "a DSP negotiation's messages cannot be sent or answered"
                )
            return self.dsp_delivery(pending)
        assert self.delivery is not None
        return self.delivery(pending)

    def _gave_up(self, pending: Pending, reason: str) -> None:
        """The outbox stopped sending a message: tell whoever queued it."""
        if pending.method == CONFIRM_METHOD:
            assert self.asker is not None
            self.asker.gave_up(pending, reason)
            return
        if pending.method.startswith(TRANSFER_METHOD) and self.dsp_transfers is not None:
            self.dsp_transfers.give_up(pending, reason)
            return
        assert self.delivery is not None
        self.delivery.give_up(pending, reason)

    def _dsp_hook(self, name: str) -> Callable[..., None]:
        """A DSP transfer hook (``DspTransfers.<name>``) when the binding serves, for the
        negotiator and the transfer provider, built before it: what it does (end a
        process, queue a message) is logged, not raised, if it fails — the change that
        called it is made already."""

        def hook(*args: Any) -> None:
            if self.dsp_transfers is None:
                return
            try:
                getattr(self.dsp_transfers, name)(*args)
            except ConnectorError as exc:
                log.warning("DSP transfer hook failed", extra={"hook": name, "reason": str(exc)})

        return hook

    def _dispatch(self, messages: list[Pending]) -> None:
        """Send messages a transition just committed (the outbox retries what fails)."""
        if self.outbox is not None:
            self.outbox.dispatch(messages)

    def _hold_messages(self) -> AbstractContextManager[list[Pending]]:
        """Messages dispatched in this block are kept back for ``_dispatch`` (``Outbox.held``)."""
        return self.outbox.held() if self.outbox is not None else contextlib.nullcontext([])

    def _settle_delivered(self, tx: RawTransaction) -> None:
        """Mark what the outbox delivered since the last negotiation write, in this one."""
        if self.outbox is not None:
            self.outbox.settle_in(tx)

    def _send_inline(self) -> AbstractContextManager[None]:
        """Messages dispatched in this block go out on the calling thread (``Outbox.inline``)."""
        return self.outbox.inline() if self.outbox is not None else contextlib.nullcontext()

    def _negotiator(self) -> Negotiator:
        if self.negotiator is None:
            raise RuntimeError("node not started")
        return self.negotiator

    def _served_product(
        self,
        store: SqlDirectoryStore,
        servicer: RegistryServicer,
        tls: TlsMaterial,
        provider: str,
        product_id: str,
    ) -> catalog_pb2.ProductSummary:
        """The operator asks ``provider``'s connector for a product it lists in the index."""
        entry = store.get(provider)
        if entry.revoked or not entry.address:
            raise PermissionDenied(f"{provider} is revoked or runs no connector")
        channel = open_channel(
            entry.address,
            tls.identity,
            space=self.cfg.participant.space,
            peer=provider,
            token=servicer.own_token,
            max_message_bytes=self.cfg.server.max_message_bytes,
        )
        with channel, calling(provider):
            found: catalog_pb2.GetProductResponse = catalog_pb2_grpc.CatalogServiceStub(
                channel
            ).GetProduct(
                catalog_pb2.GetProductRequest(product_id=product_id),
                timeout=self.cfg.registry.call_timeout_seconds,
            )
        return found.product

    def _peer_address(self, participant: str) -> str:
        """``participant``'s address in the directory, looked up anew on every call:
        ``PermissionDenied`` when it is revoked or runs no connector."""
        if self.registry is None:
            raise Unavailable("the operator registry does not negotiate contracts")
        peer = self.registry.lookup(participant)
        if peer.revoked or not peer.address:
            raise PermissionDenied(f"{participant} is revoked or runs no connector")
        return peer.address

    def _registered_host(self, participant: str) -> str:
        """The host of ``participant``'s address in the directory (DSP callbacks' only host)."""
        return self._peer_address(participant).rpartition(":")[0].strip("[]")

    def _member_channel(self, target: str) -> grpc.Channel:
        """A channel to another member, found through the registry, with our token."""
        return self._open_member_channel(target, self._peer_address(target))

    def _open_member_channel(self, target: str, address: str) -> grpc.Channel:
        if self.registry is None or self._tls is None:
            raise Unavailable("the operator registry does not negotiate contracts")
        return open_channel(
            address,
            self._tls.identity,
            space=self.cfg.participant.space,
            peer=target,
            token=self.registry.token,
            max_message_bytes=self.cfg.server.max_message_bytes,
        )

    def _kept_member_channel(self, target: str) -> grpc.Channel:
        """``_member_channel``, kept open between calls (callers do not close it).

        A TLS handshake per question cost about 2.4 ms of a compute answer's path (3.9 ms a
        call on a fresh channel, 1.4 ms on an open one). The directory is still consulted
        on every call: a member revoked gets no channel, one at a new address (or our own
        new certificate) a fresh one; gRPC reconnects an open channel by itself.
        """
        address = self._peer_address(target)
        if self._tls is None:
            raise Unavailable("the operator registry does not negotiate contracts")
        key = (address, self._tls.identity.cert_pem)
        with self._channels_lock:
            kept = self._kept_channels.get(target)
            if kept is None or kept[0] != key:
                # A replaced channel is not closed under a call still using it: it goes
                # with its last reference.
                kept = self._kept_channels[target] = (
                    key,
                    self._open_member_channel(target, address),
                )
            return kept[1]

    def _catalog(self) -> Catalog:
        if self.catalog is None:
            raise RuntimeError("node not started")
        return self.catalog

    def _log(self) -> TransparencyLog:
        if self.log is None:
            raise RuntimeError("node not started")
        return self.log

    def _signing_key_of(self, participant: str) -> ed25519.Ed25519PublicKey:
        """A member's signing key from the directory (cached for a minute)."""
        now = self.clock.now()
        with self._keys_lock:
            cached = self._keys.get(participant)
            if cached is not None and now - cached[0] < 60:
                return cached[1]
        key = self._lookup_signing_key(participant)
        with self._keys_lock:
            self._keys[participant] = (now, key)
        return key

    def _lookup_signing_key(self, participant: str) -> ed25519.Ed25519PublicKey:
        """A member's signing key from the directory (local for the operator)."""
        if self.registry is not None:
            raw = self.registry.lookup(participant).signing_public_key
        else:
            assert self.db is not None
            raw = SqlDirectoryStore(self.db).get(participant).signing_public_key
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)

    def _checkpoint_loop(self) -> None:
        interval = self.cfg.audit.checkpoint_interval_seconds
        while not self._stop.wait(interval):
            try:
                self._log().checkpoint()
            except ConnectorError as exc:
                log.warning("checkpoint failed", extra={"reason": str(exc)})

    def status(self, refresh: bool = False) -> NodeStatus:
        """Token and revocation state for ``AdminService.GetStatus``; fetched anew on
        ``refresh`` (after the operator granted or revoked something)."""
        if self.registry is None:
            return NodeStatus(token_expires_at=0, revocations=None)
        registry = self.registry
        if refresh:
            registry.refresh_revocations()
            registry.refresh_token()
            registry.refresh_directory()
        directory = registry.directory_held
        return NodeStatus(
            registry.token_expires_at,
            registry.revocations_held,
            directory_issued_at=directory.issued_at if directory else 0,
            directory_max_age_seconds=int(registry.directory_max_age),
            registry_error=registry.registry_error,
        )

    def wait_ready(self, timeout: float) -> bool:
        """Wait until a connector holds a token and a revocation list (operator: at once)."""
        if self.registry is None:
            return True
        registry = self.registry
        deadline = self.clock.now() + timeout
        while not self._stop.is_set():
            if registry.revocations_held is not None and registry.token_expires_at:
                return True
            if self.clock.now() >= deadline:
                return False
            self._stop.wait(0.05)
        return False

    def _close_clients(self) -> None:
        if self.outbox is not None:
            self.outbox.stop()
        if self.asker is not None:
            self.asker.stop()
        with self._channels_lock:
            for _, channel in self._kept_channels.values():
                channel.close()
            self._kept_channels.clear()
        if self.delivery is not None:
            self.delivery.close()
        if self.dsp_delivery is not None:
            self.dsp_delivery.close()
        if self.policy is not None:
            self.policy.engine.close()
        if self.log is not None:
            self.log.close()
        if self.registry is not None:
            self.registry.close()
        if self.db is not None:
            self.db.close()

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: in-flight calls finish (up to ``grace``), then close everything."""
        self._stop.set()
        if self.registry is not None:
            self.registry.stop_watching()
        if self.dsp is not None:
            try:
                self.dsp.stop()
            except Exception:  # the rest must stop all the same, or the process stays up
                log.exception("stopping the DSP binding failed; stopping the rest")
        if self._handle is not None:
            self._handle.stop(self.cfg.server.grace_seconds if grace is None else grace)
        # One budget for the background threads together (each waited 5 s in turn before):
        # they are daemons watching the stop event, and one still inside a call must not
        # make stopping take longer than the grace plus this.
        deadline = time.monotonic() + _THREADS_STOP_SECONDS
        threads = (
            self._refresher,
            self._watcher,
            self._checkpointer,
            self._sweeper_thread,
            self._disclosure_counter,
        )
        for thread in threads:
            if thread is not None:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._close_clients()
        if self.computations is not None:
            self.computations.close()
        self.sql_sources.close()
        self.stream_sources.close()
        log.info("stopped", extra={"participant": self.cfg.participant.id})

    def wait(self) -> None:
        """Block until ``stop`` is called."""
        self._stop.wait()

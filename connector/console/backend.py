"""What the console reads and changes, through the admin API (and, for logs, AuditService).

Every call is a blocking gRPC call on the CLI's own channels (``admin_channel``,
``member_channel``); the web server runs them in a thread so a slow connector does not
stall other pages. Errors come out as ``ConnectorError`` (``calling``), which the pages
show as a banner.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from connector._proto.tds.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    registry_pb2,
)
from connector.audit.checkpoint import Checkpoint, log_origin
from connector.audit.note import ALG_ED25519, key_id, parse_note
from connector.audit.receipts import parse_receipt, receipt_id
from connector.config import Config
from connector.console.timeline import growth_chart
from connector.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    VerificationError,
)
from connector.identifiers import PARTICIPANT_ID
from connector.node.clients import admin_channel, member_channel, registry_client
from connector.registry.client import RegistryClient
from connector.rpc.channel import calling

__all__ = ["AdminBackend", "EntryEvidence", "LogSearch"]

_TIMEOUT = 30.0
PAGE = 50
"""Log entries shown a page (GetEntries pages server-side; the browser never gets more)."""
ROWS = 100
ACTIVITY_DAYS = 30
"""Days the transfers-per-day chart covers."""
GROWTH_POINTS = 16
"""Points the log-growth chart samples (one GetEntries of one entry each)."""
GROWTH_CHECKPOINTS = 200
"""The newest checkpoints the growth chart marks (the table lists 20)."""
"""Rows a list page shows: the admin API pages them (rendering 10,000 rows took ~1.5 s)."""


def negotiation_json(n: admin_pb2.NegotiationInfo) -> dict[str, Any]:
    """A negotiation as ``tds negotiate --json`` prints it (one rendering; the CLI module is
    imported on first use, as the other renderings are)."""
    from connector.cli.negotiate import negotiation_json as rendered

    return rendered(n)


@functools.lru_cache(maxsize=2048)
def agreement_terms(signed: str) -> dict[str, Any]:
    """What the contracts page shows of a signed agreement: its terms and who signed it in
    which role, read from the JWS as stored (the connector verified both signatures
    against the directory's keys, and the payload's canonical form, before it stored the
    agreement); ``error`` if it cannot be read.

    Read straight from the payload's JSON, not through ``parse_agreement``, whose check of
    the canonical form (serialising the terms again) was most of a contracts page: 0.7 to
    1.4 ms an agreement, a page of 100. A stored agreement never changes, so the terms are
    also remembered by the signed text (the caller must not change the answer)."""
    if not signed:
        return {"error": "no signed agreement stored"}
    try:
        doc = json.loads(signed)
        terms = json.loads(_unb64(doc["payload"]))
        if not isinstance(terms, dict) or terms.get("tds_agreement") != 1:
            raise ValueError("the payload is not a tds agreement")
        signers = []
        for sig in doc["signatures"]:
            header = json.loads(_unb64(sig["protected"]))
            who, role = str(header.get("kid", "")), str(header.get("tds_role", ""))
            signers.append({"who": who, "role": role})
        until_ns = int(terms.get("valid_until_ns", 0))  # a decimal string past 2^53
        obligations = terms.get("obligations", {})
        registration_code = str(terms.get("registration_code", ""))
        limits = {k: int(terms.get(k, 0)) for k in ("max_transfers", "max_bytes", "max_messages")}
        delivery = [str(mode) for mode in terms.get("delivery", ["copy"])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"error": f"the stored agreement cannot be read: {exc}"}
    return {
        "valid_until_ms": until_ns // 10**6 if 0 < until_ns < _FAR_NS else 0,
        **limits,
        "delivery": delivery,
        "obligations": json.dumps(_ints(obligations), ensure_ascii=False, sort_keys=True),
        "registration_code": registration_code,
        "signers": signers,
    }


def _unb64(text: str) -> bytes:
    """Base64url without padding, as JWS writes it."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _ints(value: Any) -> Any:
    """The ``*_ns`` integers the signed payload carries as decimal strings, back as
    numbers (as ``parse_agreement`` reads them)."""
    if isinstance(value, dict):
        return {
            k: (
                int(v)
                if k.endswith("_ns") and isinstance(v, str) and v.lstrip("-").isdigit()
                else _ints(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


_FAR_NS = 253402300800 * 10**9
"""Year 10000: a delete-after this late is no deadline a person waits for."""


def holding(t: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """A received transfer (``transfer_json``) with what the holdings page shows: when its
    obligations make it go (``delete_after_ms``, 0 for never; ``left_ms``) and its receipt
    (the parties' attestation, as stored; the connector verified both signatures)."""
    obligations = dict(t["obligations"])
    ns = obligations.pop("delete_after_ns", 0)
    deadline_ms = ns // 10**6 if isinstance(ns, int) and 0 < ns < _FAR_NS else 0
    receipt: dict[str, Any] | None = None
    if t["receipt"]:
        try:
            attested = parse_receipt(t["receipt"])
            signatures = len(json.loads(t["receipt"])["signatures"])
            receipt = {
                "id": receipt_id(t["receipt"]),
                "signatures": signatures,
                **dataclasses.asdict(attested),
            }
        except (InvalidRequest, VerificationError) as exc:
            receipt = {"error": str(exc)}
    return {
        **t,
        "delete_after_ms": deadline_ms,
        "left_ms": deadline_ms - now_ms if deadline_ms else 0,
        "other_obligations": obligations,
        "receipt": receipt,
    }


def _rate(t: admin_pb2.TransferInfo, now_ms: int) -> int:
    """Bytes a second: of a running transfer so far, of an ended one over its run (0 when
    nothing moved or no time passed)."""
    took = (t.ended_ms or now_ms) - t.started_ms
    return t.received * 1000 // took if t.received and took > 0 else 0


_PARSED_CHECKPOINTS: dict[str, tuple[int, str, list[str]]] = {}
"""Checkpoints parsed, by their note's text: every log page lists the newest 200, and
parsing them again was a third of the auditor console's CPU per page (py-spy, 1,000,000
entries). A cosignature changes the text, so a cosigned note is parsed anew."""


def _checkpoint(text: str) -> dict[str, Any]:
    """A stored checkpoint as the log page lists it: size, root and who signed it."""
    parsed = _PARSED_CHECKPOINTS.get(text)
    if parsed is None:
        note = parse_note(text)
        body = Checkpoint.parse(note.text)
        parsed = (body.size, body.root.hex(), sorted({s.name for s in note.signatures}))
        if len(_PARSED_CHECKPOINTS) >= 4096:  # a bound on the memory, not a policy
            _PARSED_CHECKPOINTS.clear()
        _PARSED_CHECKPOINTS[text] = parsed
    size, root, signers = parsed
    return {"size": size, "root": root, "signers": list(signers)}


@dataclass(frozen=True)
class EntryEvidence:
    """What the browser needs to check one entry on its own: all of it as received."""

    index: int
    body: bytes
    proof: list[bytes]
    checkpoint: str
    origin: str
    log_public_key: bytes
    """The log's Ed25519 key from the registry's directory, not from the log itself."""

    def as_json(self) -> dict[str, Any]:
        """Base64 for bytes: the browser decodes and hashes exactly these."""
        b64 = base64.b64encode
        return {
            "index": self.index,
            "body": b64(self.body).decode(),
            "proof": [b64(p).decode() for p in self.proof],
            "checkpoint": self.checkpoint,
            "origin": self.origin,
            "public_key": b64(self.log_public_key).decode(),
            "key_id": key_id(self.origin, ALG_ED25519, self.log_public_key).hex(),
        }


@dataclass(frozen=True)
class LogSearch:
    """What the log explorer looks for: a kind, a party, a time window, below an index."""

    kind: str = ""
    party: str = ""
    since_ms: int = 0
    until_ms: int = 0
    before: int = 0

    def request(self, limit: int) -> audit_pb2.FindEntriesRequest:
        """The FindEntries request for one page."""
        return audit_pb2.FindEntriesRequest(
            kind=self.kind,
            party=self.party,
            since_ms=self.since_ms,
            until_ms=self.until_ms,
            before=self.before,
            limit=limit,
        )


class AdminBackend:
    """The console's one way to its connector: the admin certificate, as ``tds`` uses."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._channel: grpc.Channel | None = None
        self._registry: RegistryClient | None = None
        self._registry_lock = threading.Lock()
        self._members: dict[tuple[str, str], grpc.Channel] = {}
        """Channels to other members' logs, by (participant, address)."""
        self._stamps: dict[tuple[str, int], int | None] = {}
        """When log entries were stamped, by (log, index), for the growth charts."""

    @property
    def participant(self) -> str:
        """Whose connector this is."""
        return self.cfg.participant.id

    @property
    def runs_connector(self) -> bool:
        """False for a participant that only reads others' logs (an auditor), and for the
        operator, whose server is the registry."""
        return bool(self.cfg.server.listen) and not self.is_operator

    def _admin(self) -> admin_pb2_grpc.AdminServiceStub:
        if not self.runs_connector:
            raise PreconditionFailed(
                f"{self.participant} runs no connector (its config has no server.listen): "
                "only the audit log pages, which read other connectors, work here"
            )
        if self._channel is None:
            self._channel = admin_channel(self.cfg)
        return admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        """Close the channels to the connector and the registry."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        with self._registry_lock:
            if self._registry is not None:
                self._registry.close()
                self._registry = None
            for channel in self._members.values():
                channel.close()
            self._members.clear()

    def _registry_client(self) -> RegistryClient:
        """One registry client for the console's life (thread-safe; it keeps its token), so
        a page does not pay a TLS handshake and a token each time."""
        with self._registry_lock:
            if self._registry is None:
                self._registry = registry_client(self.cfg)
            return self._registry

    def status(self) -> dict[str, Any]:
        """The connector's own status (``tds status``)."""
        with calling("your connector"):
            s = self._admin().GetStatus(admin_pb2.GetStatusRequest(), timeout=_TIMEOUT)
        return {
            "participant_id": s.participant_id,
            "role": s.role,
            "space": s.space,
            "token_expires_at": s.token_expires_at,
            "registry_error": s.registry_error,
            "version": s.version,
        }

    def products(self, page_token: str = "") -> tuple[list[dict[str, Any]], str]:
        """A page of the products this connector publishes, by id, and the next page's
        token ("" after the last)."""
        with calling("your connector"):
            resp = self._admin().ListOwnProducts(
                admin_pb2.ListOwnProductsRequest(page_size=ROWS, page_token=page_token),
                timeout=_TIMEOUT,
            )
        return [json.loads(p) for p in resp.products_json], resp.next_page_token

    def negotiations(
        self, page_token: str = "", *, pending: bool = False, agreements: bool = False
    ) -> tuple[list[dict[str, Any]], str]:
        """A page of negotiations, newest first (only those waiting for approval, or with
        agreements), and the next page's token."""
        with calling("your connector"):
            resp = self._admin().ListNegotiations(
                admin_pb2.ListNegotiationsRequest(
                    pending_approval=pending,
                    agreements=agreements,
                    page_size=ROWS,
                    page_token=page_token,
                ),
                timeout=_TIMEOUT,
            )
        rows = [negotiation_json(n) for n in resp.negotiations]
        if agreements:
            for row, n in zip(rows, resp.negotiations, strict=True):
                row["signed"] = agreement_terms(n.agreement)
        return rows, resp.next_page_token

    def negotiation(self, pid: str) -> dict[str, Any]:
        """One negotiation with its transitions from this connector's log, oldest first."""
        if not pid:
            raise InvalidRequest("which negotiation? the address names none")
        with calling("your connector"):
            info = self._admin().GetNegotiation(
                admin_pb2.NegotiationRef(pid=pid, with_transitions=True), timeout=_TIMEOUT
            )
        return {
            **negotiation_json(info),
            "transitions": [
                {
                    "from": t.from_state,
                    "to": t.to_state,
                    "time_ms": t.time_ms,
                    "log_index": t.log_index,
                }
                for t in info.transitions
            ],
        }

    def decide(self, pid: str, action: str, reason: str) -> dict[str, Any]:
        """Approve or reject a negotiation waiting for this provider."""
        if not pid:
            raise InvalidRequest("which negotiation? the form carried no id")
        stub = self._admin()
        method = {"approve": stub.ApproveNegotiation, "reject": stub.RejectNegotiation}.get(action)
        if method is None:
            raise InvalidRequest(f"unknown decision {action!r}: approve or reject")
        with calling("your connector"):
            info = method(admin_pb2.NegotiationRef(pid=pid, reason=reason), timeout=_TIMEOUT)
        return negotiation_json(info)

    def revoke(self, agreement_id: str, reason: str) -> dict[str, Any]:
        """Revoke an agreement this connector provided; the reason is signed into it."""
        if not reason.strip():
            raise InvalidRequest("give a reason: it is signed into the revocation")
        with calling("your connector"):
            info = self._admin().RevokeAgreement(
                admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason=reason),
                timeout=_TIMEOUT,
            )
        return negotiation_json(info)

    def transfers(
        self, page_token: str = "", *, role: str = "", holdings: bool = False
    ) -> tuple[list[dict[str, Any]], str]:
        """A page of transfers this connector took part in (of one role, or the consumer's
        kept holdings), newest first, and the next page's token."""
        with calling("your connector"):
            resp = self._admin().ListTransfers(
                admin_pb2.ListTransfersRequest(
                    role=role, holdings=holdings, page_size=ROWS, page_token=page_token
                ),
                timeout=_TIMEOUT,
            )
        from connector.cli.transfer import transfer_json  # one rendering of a transfer

        now_ms = int(time.time() * 1000)
        return [
            {**transfer_json(t), "received": t.received, "rate": _rate(t, now_ms)}
            for t in resp.transfers
        ], resp.next_page_token

    def holdings(
        self, page_token: str = "", *, kept: bool = True
    ) -> tuple[list[dict[str, Any]], str]:
        """A page of what this connector received as a consumer, newest first: the holdings
        it keeps (``kept``), or every transfer it received, deleted ones too (its receipts);
        each with its obligations' deadline and its receipt, read."""
        found, following = self.transfers(page_token, role="consumer", holdings=kept)
        now_ms = int(time.time() * 1000)
        return [holding(t, now_ms) for t in found], following

    def metering(self, page_token: str = "") -> tuple[list[dict[str, Any]], str]:
        """A page of the use of each agreement this connector provided (``tds report
        metering``), by consumer then agreement, and the next page's token."""
        with calling("your connector"):
            resp = self._admin().MeteringReport(
                admin_pb2.MeteringReportRequest(page_size=ROWS, page_token=page_token),
                timeout=_TIMEOUT,
            )
        rows = [
            {
                "agreement_id": m.agreement_id,
                "consumer": m.consumer,
                "product": m.product_id,
                "transfers": m.transfers,
                "max_transfers": m.max_transfers,
                "completed": m.completed,
                "completed_bytes": m.completed_bytes,
                "computations": m.computations,
                "epsilon_spent": m.epsilon_spent,
                "epsilon_budget": m.epsilon_budget,
            }
            for m in resp.agreements
        ]
        return rows, resp.next_page_token

    def disclosure(self, year: int) -> dict[str, Any]:
        """The disclosure report of public data released in ``year`` (``tds report
        disclosure``), with each grant's term in milliseconds for the page."""
        if not 2000 <= year <= 9999:
            raise InvalidRequest(f"year must be between 2000 and 9999, not {year}")
        with calling("your connector"):
            resp = self._admin().DisclosureReport(
                admin_pb2.DisclosureReportRequest(period=year), timeout=60
            )
        report: dict[str, Any] = json.loads(resp.report_json)
        for op in report["operators"]:
            for grant in op["grants"]:
                for edge in ("start", "end"):
                    ns = int(grant.get(f"{edge}_ns", 0) or 0)
                    grant[f"{edge}_ms"] = ns // 10**6 if 0 < ns < _FAR_NS else 0
        return report

    def consents(self) -> list[dict[str, Any]]:
        """An individual's consents, withdrawn ones included (``tds consent list``)."""
        from connector.cli.consent import consent_json  # one rendering of a consent

        with calling("your connector"):
            resp = self._admin().ListConsents(
                admin_pb2.ListConsentsRequest(include_withdrawn=True), timeout=_TIMEOUT
            )
        now_ns = time.time_ns()
        return [consent_json(c, now_ns) for c in resp.consents]

    def grant_consent(
        self, recipient: str, purposes: str, method: str, categories: str, expires: str
    ) -> dict[str, Any]:
        """Give a consent as ``tds consent grant`` does, from the form's text; the
        connector checks the rest (an individual's connector, a known recipient)."""
        from connector.cli.consent import consent_json, consent_request

        if not (recipient and purposes.strip() and method.strip() and categories.strip()):
            raise InvalidRequest("give the recipient, purposes, method and categories")
        if not expires:
            raise InvalidRequest("give the consent's expiry date (YYYY-MM-DD, UTC)")
        request = consent_request(recipient, purposes, method, categories, expires, "expires")
        with calling("your connector"):
            c = self._admin().GrantConsent(request, timeout=_TIMEOUT)
        return consent_json(c, time.time_ns())

    def activity(self, days: int = ACTIVITY_DAYS) -> dict[str, Any]:
        """Transfers per day (oldest first) and the stream subscriptions with their rate
        (messages and bytes a second over the connector's rate window)."""
        with calling("your connector"):
            resp = self._admin().TransferActivity(
                admin_pb2.TransferActivityRequest(days=days), timeout=_TIMEOUT
            )
        seconds = max(1.0, resp.rate_window_ms / 1000)
        return {
            "days": [
                {
                    "day_ms": d.day_ms,
                    "started": d.started,
                    "completed": d.completed,
                    "completed_bytes": d.completed_bytes,
                }
                for d in resp.days
            ],
            "streams": [
                {
                    "agreement_id": s.agreement_id,
                    "role": s.role,
                    "counterparty": s.counterparty,
                    "product": s.product_id,
                    "state": s.state,
                    "windows": s.windows,
                    "messages": s.messages,
                    "bytes": s.bytes,
                    "updated_ms": s.updated_ms,
                    "messages_per_s": round(s.recent_messages / seconds, 2),
                    "bytes_per_s": round(s.recent_bytes / seconds, 1),
                }
                for s in resp.streams
            ],
            "rate_window_s": int(seconds),
        }

    def withdraw_consent(self, consent_id: str, reason: str) -> list[str]:
        """Withdraw a consent; the agreements revoked because of it."""
        if not consent_id:
            raise InvalidRequest("which consent? the form carried no id")
        with calling("your connector"):
            c = self._admin().WithdrawConsent(
                admin_pb2.WithdrawConsentRequest(consent_id=consent_id, reason=reason),
                timeout=_TIMEOUT,
            )
        return list(c.revoked_agreements)

    # -- the operator's view: the registry's directory and grants

    @property
    def is_operator(self) -> bool:
        """The operator's console: its own server is the registry."""
        return self.cfg.participant.role == "operator"

    def _operator_only(self, what: str) -> None:
        """Grants are the operator's to make and end: another console is told so before any
        call (its administrator certificate is for its own connector, not the registry)."""
        if not self.is_operator:
            raise PermissionDenied(f"only the operator's console can {what}")

    def participants(self) -> list[dict[str, Any]]:
        """The registry's directory, as ``tds registry list`` shows it."""
        peers = self._registry_client().list_participants()
        now_ms = int(time.time() * 1000)
        return [
            {
                "id": p.id,
                "role": p.role,
                "address": p.address,
                "revoked": p.revoked,
                "enrolled_at": p.enrolled_at,
                "certificate_not_after_ms": p.certificate_not_after_ms,
                "certificate_expiry": p.certificate_expiry(now_ms).value,
                "certificate_left_ms": p.certificate_not_after_ms - now_ms,
            }
            for p in peers
        ]

    def catalog(
        self, text: str, tag: str, grade: str, page_token: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """A page of the registry's catalog index (``SearchCatalog``: every word of
        ``text`` in the title, description or tags; of a tag; of a grade), and the next
        page's token."""
        resp = self._registry_client().search_catalog_page(
            registry_pb2.SearchCatalogRequest(
                text=text, tag=tag, grade=grade, page_size=ROWS, page_token=page_token
            )
        )
        rows = [
            {
                "provider": c.provider,
                "product": c.product_id,
                "title": c.title,
                "description": c.description,
                "grade": c.grade,
                "tags": list(c.tags),
                "registration_code": c.registration_code,
                "registered_at": c.registered_at,
            }
            for c in resp.listings
        ]
        return rows, resp.next_page_token

    def grants(self) -> list[dict[str, Any]]:
        """Authorised-operation grants, revoked ones included (``tds registry grants --all``)."""
        from connector.cli.registry import grant_json  # one rendering of a grant

        found = self._registry_client().list_grants(include_revoked=True)
        return [grant_json(g) for g in found]

    def grant(
        self, participant: str, scope: str, purposes: str, start: str, end: str, body: str
    ) -> dict[str, Any]:
        """Grant authorised operation as ``tds registry grant`` does, from the form's text
        (comma-separated scope and purposes, dates as YYYY-MM-DD, UTC; no start is now). The
        registry checks the rest (who may operate, a term of at most five years)."""
        from connector.cli.registry import grant_json, grant_operation

        self._operator_only("grant authorised operation")
        if not participant or not body.strip() or not end:
            raise InvalidRequest("give the participant, the term's end and the granting body")
        granted = grant_operation(
            self.cfg, participant, scope, purposes, start=start, end=end, body=body,
            names=("start", "end"),
        )  # fmt: skip
        return grant_json(granted)

    def revoke_grant(self, grant_id: str, reason: str) -> None:
        """Revoke a grant with the operator's administrator certificate."""
        from connector.cli.registry import revoke_grant

        self._operator_only("revoke a grant")
        if not grant_id or not reason.strip():
            raise InvalidRequest("give the grant and a reason: the reason is signed into it")
        revoke_grant(self.cfg, grant_id, reason)

    # -- the auditor's view: another connector's log, read as ``tds audit fetch`` reads it

    def _log(self, target: str) -> tuple[audit_pb2_grpc.AuditServiceStub, bytes]:
        """A stub on ``target``'s AuditService and the log key the signed directory gives
        for it. The directory is the registry client's verified copy (fetched again when
        due), and the channel to each log is kept for the console's life: a page used to
        list every participant and open a new mutual-TLS channel (a handshake, and the
        membership token checked anew by the peer), which made the log pages' slowest
        answers."""
        registry = self._registry_client()
        try:
            peer = registry.lookup(target)
        except NotFound:
            raise NotFound(f"{target} is not in the directory") from None
        if not peer.address:
            raise NotFound(f"{target} runs no connector, so it keeps no log")
        with self._registry_lock:
            channel = self._members.get((target, peer.address))
            if channel is None:
                # A moved peer (a new address) gets a new channel; the old one is closed.
                for key in [k for k in self._members if k[0] == target]:
                    self._members.pop(key).close()
                channel = member_channel(self.cfg, registry, target, peer.address)
                self._members[(target, peer.address)] = channel
        return audit_pb2_grpc.AuditServiceStub(channel), bytes(peer.signing_public_key)

    def log_page(self, target: str, start: int, search: LogSearch | None = None) -> dict[str, Any]:
        """One page of ``target``'s log: from ``start`` in log order (the newest page when
        ``start`` < 0), or, with ``search``, the entries it finds newest first (FindEntries:
        by kind, party and time, a bounded stretch of the log per call). With the log's
        checkpoints and its growth sampled at ``GROWTH_POINTS`` entries for the chart."""
        stub, _ = self._log(target)
        searched_from = 0
        with calling(target):
            note = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(fresh=True), timeout=_TIMEOUT)
            checkpoints = stub.ListCheckpoints(
                audit_pb2.ListCheckpointsRequest(newest=GROWTH_CHECKPOINTS), timeout=_TIMEOUT
            ).checkpoints
            size = int(note.checkpoint.split("\n")[1])
            if search is not None:
                found = stub.FindEntries(search.request(PAGE), timeout=_TIMEOUT)
                rows, searched_from = list(found.entries), found.searched_from
                start = rows[-1].index if rows else 0
            else:
                if start < 0:
                    start = max(0, size - PAGE)
                start = min(start, max(0, size - 1))
                rows = (
                    list(
                        stub.GetEntries(
                            audit_pb2.GetEntriesRequest(start=start, end=min(size, start + PAGE)),
                            timeout=_TIMEOUT,
                        ).entries
                    )
                    if size
                    else []
                )
            samples = self._growth(stub, target, size)
        entries = []
        for row in rows:
            body = json.loads(row.body)
            entries.append(
                {
                    "index": row.index,
                    "kind": body.get("kind", ""),
                    "actor": body.get("actor", ""),
                    "time_ms": body.get("time_ms", 0),
                    "parties": body.get("parties", []),
                    "data": json.dumps(body.get("data", {}), ensure_ascii=False, sort_keys=True),
                }
            )
        shown = [_checkpoint(c) for c in checkpoints[-GROWTH_CHECKPOINTS:]][::-1]
        return {
            "target": target,
            "size": size,
            "start": start,
            "page": PAGE,
            "entries": entries,
            "search": search,
            "searched_from": searched_from,
            "checkpoints": shown[:20],
            "growth": growth_chart(samples, shown),
        }

    def _growth(
        self, stub: audit_pb2_grpc.AuditServiceStub, target: str, size: int
    ) -> list[tuple[int, int]]:
        """(time, entries so far) at about ``GROWTH_POINTS`` entries spread over the log
        and at its last. The points are multiples of a power of two, so as the log grows
        they stay where they were and their times (an entry never changes) come from this
        console's memory; only new points cost a GetEntries of one entry. An entry the
        caller may not read (a member sees only entries naming it) is left out."""
        if size < 2:
            return []
        step = 1
        while size // step > GROWTH_POINTS:
            step *= 2
        if len(self._stamps) > 50_000:  # a bound on the memory, not a policy
            self._stamps.clear()
        samples = []
        for index in sorted({*range(0, size, step), size - 1}):
            key = (target, index)
            if key not in self._stamps:
                rows = stub.GetEntries(
                    audit_pb2.GetEntriesRequest(start=index, end=index + 1), timeout=_TIMEOUT
                ).entries
                self._stamps[key] = (
                    int(json.loads(rows[0].body).get("time_ms", 0)) if rows else None
                )
            stamp = self._stamps[key]
            if stamp is not None:
                samples.append((stamp, index + 1))
        return samples

    def evidence(self, target: str, index: int) -> EntryEvidence:
        """The newest checkpoint, entry ``index`` and its proof against that checkpoint."""
        stub, public_key = self._log(target)
        with calling(target):
            note = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(fresh=True), timeout=_TIMEOUT)
            size = int(note.checkpoint.split("\n")[1])
            if not 0 <= index < size:
                raise NotFound(f"no entry {index}: the log holds {size}")
            [row] = stub.GetEntries(
                audit_pb2.GetEntriesRequest(start=index, end=index + 1), timeout=_TIMEOUT
            ).entries
            proof = stub.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(index=index, tree_size=size),
                timeout=_TIMEOUT,
            ).proof
        return EntryEvidence(
            index=index,
            body=row.body,
            proof=list(proof),
            checkpoint=note.checkpoint,
            origin=log_origin(self.cfg.participant.space, target),
            log_public_key=public_key,
        )

    def reconcile(self, party_a: str, party_b: str) -> dict[str, Any]:
        """``tds audit fetch`` of both parties' logs (without cosigning: reconciling only
        reads) into a scratch directory, then ``tds audit reconcile`` of the two exports:
        the same checks, the same answer. Each fetch verifies the log against its signed
        checkpoint and against what this auditor last cosigned for it."""
        from connector.audit.auditor import fetch_and_witness
        from connector.audit.verify import reconcile

        if not party_a or not party_b:
            raise InvalidRequest("name both parties whose receipts to reconcile")
        if party_a == party_b:
            raise InvalidRequest("reconciling needs two different parties")
        for who in (party_a, party_b):
            # Directory ids only: ``tds audit fetch`` also takes ID@HOST:PORT, and the name
            # is a folder of the scratch directory.
            PARTICIPANT_ID.check(who)
        with tempfile.TemporaryDirectory(prefix="tds-console-reconcile-") as scratch:
            for who in (party_a, party_b):
                fetch_and_witness(self.cfg, who, Path(scratch) / who, cosign=False)
            return reconcile(Path(scratch) / party_a, Path(scratch) / party_b)

"""The consumer's obligations on data it holds: delete on time, on revocation, on withdrawal.

Each deletion is logged before the file goes, so the log never lacks a deletion that
happened; a holding whose file is already gone is still logged and marked deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from connector.audit import jws
from connector.audit.log import AuditLog
from connector.clock import Clock
from connector.errors import ConnectorError, NotFound
from connector.negotiation.store import NegotiationStore
from connector.transfer.store import Transfer, TransferStore

__all__ = ["HoldingsSweeper"]

log = logging.getLogger(__name__)

ConsentWithdrawn = Callable[[Transfer], bool]


def _never(_: Transfer) -> bool:
    return False


def consent_withdrawn_for(negotiations: NegotiationStore, agreement_id: str) -> bool:
    """Whether the provider revoked the agreement because the individual withdrew consent.

    The revocation is signed by the provider (the individual's connector) and names the
    withdrawn consent; it arrives through the provider's outbox, so it is not lost while
    this connector is down.
    """
    try:
        n = negotiations.by_agreement(agreement_id)
    except NotFound:
        return False
    if not n.revocation:
        return False
    try:
        body = jws.payload_of(n.revocation, "revocation")
    except ConnectorError:
        return False
    return isinstance(body, dict) and bool(body.get("consent_withdrawn"))


class HoldingsSweeper:
    """Deletes held data whose obligations say it must go."""

    def __init__(
        self,
        *,
        store: TransferStore,
        negotiations: NegotiationStore,
        audit: AuditLog,
        clock: Clock,
        consent_withdrawn: ConsentWithdrawn = _never,
    ) -> None:
        self._store = store
        self._negotiations = negotiations
        self._audit = audit
        self._clock = clock
        self._consent_withdrawn = consent_withdrawn
        self._lock = threading.Lock()

    def _why(self, t: Transfer, now_ns: int) -> str | None:
        obligations = t.obligations
        delete_after = obligations.get("delete_after_ns")
        if isinstance(delete_after, int) and now_ns >= delete_after:
            return "delete_after"
        if obligations.get("delete_on_consent_withdrawal", False) and self._consent_withdrawn(t):
            return "consent_withdrawn"
        if obligations.get("delete_on_revocation", False):
            try:
                if self._negotiations.by_agreement(t.agreement_id).revocation:
                    return "agreement_revoked"
            except NotFound:
                return "agreement_unknown"
        return None

    def sweep(self) -> list[tuple[str, str]]:
        """Delete every holding that must go now; (transfer, reason) of each deletion."""
        deleted: list[tuple[str, str]] = []
        with self._lock:
            now_ns = int(self._clock.now() * 1_000_000_000)
            for t in self._store.list(holdings=True):
                reason = self._why(t, now_ns)
                if reason is None:
                    continue
                try:
                    self._audit.record(
                        "holding.deleted",
                        parties=[t.counterparty],
                        data={
                            "transfer": t.id,
                            "agreement": t.agreement_id,
                            "product": t.product,
                            "sha256": t.sha256,
                            "size": t.size,
                            "reason": reason,
                        },
                    )
                    Path(t.path).unlink(missing_ok=True)
                    self._store.update(
                        t.id, deleted_ms=int(self._clock.now() * 1000), reason=reason
                    )
                except (ConnectorError, OSError) as exc:
                    log.warning("holding not deleted", extra={"transfer": t.id, "reason": str(exc)})
                    continue
                deleted.append((t.id, reason))
        return deleted

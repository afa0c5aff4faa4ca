"""The consumer's obligations on data it holds: delete on time, on revocation, on withdrawal.

Each deletion is logged before the file goes, so the log never lacks a deletion that
happened; a holding whose file is already gone is still logged and marked deleted.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from connector.audit.log import AuditLog
from connector.clock import Clock
from connector.errors import ConnectorError, NotFound, VerificationError
from connector.identifiers import TRANSFER_ID, check_format, contained
from connector.negotiation.agreement import revocation_terms
from connector.negotiation.store import NegotiationStore
from connector.transfer.store import Transfer, TransferStore

__all__ = ["HoldingsSweeper", "holding_path"]

log = logging.getLogger(__name__)


def holding_path(
    holdings_dir: Path, transfer_id: str, fmt: str = "", *, partial: bool = False
) -> Path:
    """Where the consumer keeps a transfer's bytes: ``ID.part`` while they arrive, then
    ``ID`` (a file) or ``ID.FORMAT`` (a table), directly inside ``holdings_dir``.

    Derived from the transfer's id and format each time, both checked against their
    grammar, and never from a path in a record: an id or format a provider chose cannot
    name a file anywhere else (``VerificationError``).
    """
    TRANSFER_ID.check(transfer_id, error=VerificationError)
    check_format(fmt, error=VerificationError)
    name = f"{transfer_id}.part" if partial else f"{transfer_id}.{fmt}" if fmt else transfer_id
    return contained(holdings_dir, name, error=VerificationError)


class HoldingsSweeper:
    """Deletes held data whose obligations say it must go."""

    def __init__(
        self,
        *,
        store: TransferStore,
        negotiations: NegotiationStore,
        audit: AuditLog,
        clock: Clock,
        holdings_dir: Path,
    ) -> None:
        self._dir = holdings_dir
        self._store = store
        self._negotiations = negotiations
        self._audit = audit
        self._clock = clock
        self._lock = threading.Lock()

    def _why(self, t: Transfer, now_ns: int) -> str | None:
        obligations = t.obligations
        delete_after = obligations.get("delete_after_ns")
        if isinstance(delete_after, int) and now_ns >= delete_after:
            return "delete_after"
        try:
            revocation = self._negotiations.by_agreement(t.agreement_id).revocation
        except NotFound:
            return "agreement_unknown" if obligations.get("delete_on_revocation") else None
        if revocation:
            # The provider revoked because the individual withdrew consent: the revocation
            # names the consent (it reached us through the provider's outbox).
            withdrawn = bool(revocation_terms(revocation).get("consent_withdrawn"))
            if withdrawn and obligations.get("delete_on_consent_withdrawal", False):
                return "consent_withdrawn"
            if obligations.get("delete_on_revocation", False):
                return "agreement_revoked"
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
                    # The file the holding's id names, not the path in its record: a row
                    # written before ids were checked must not delete a file elsewhere.
                    path = holding_path(self._dir, t.id, t.format)
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
                    path.unlink(missing_ok=True)
                    self._store.update(
                        t.id, deleted_ms=int(self._clock.now() * 1000), reason=reason
                    )
                except (ConnectorError, OSError) as exc:
                    log.warning("holding not deleted", extra={"transfer": t.id, "reason": str(exc)})
                    continue
                deleted.append((t.id, reason))
        return deleted

"""The consumer's obligations on data it holds: delete on time, on revocation, on withdrawal.

The same obligations and the same sweep cover both kinds of holding: a transfer's file and
a stream's segments (``holdings/streams/<agreement>/``). Each deletion is logged before the
data goes, so the log never lacks a deletion that happened; a holding whose data is
already gone is still logged and marked deleted.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from connector.audit.log import AuditLog
from connector.clock import Clock
from connector.errors import ConnectorError, NotFound, VerificationError
from connector.identifiers import TRANSFER_ID, check_format, contained
from connector.negotiation.agreement import Agreement, revocation_terms
from connector.negotiation.store import NegotiationStore
from connector.transfer.store import CONSUMER, TransferStore
from connector.transfer.stream_store import StreamStore

__all__ = ["HoldingsSweeper", "checked_obligations", "holding_path"]

log = logging.getLogger(__name__)

_NEVER = 2**63 - 1
# Obligations the holdings sweeper acts on, and the JSON type each must have.
_OBLIGATION_TYPES: dict[str, type] = {
    "delete_after_ns": int,
    "delete_on_revocation": bool,
    "delete_on_consent_withdrawal": bool,
}


def checked_obligations(
    text: str, agreement: Agreement, *, sender: str = "the provider's manifest"
) -> dict[str, Any]:
    """The obligations a provider sent with its data (``sender`` names the message): a JSON
    object whose known obligations have their type, holding every obligation the agreement
    fixed, and keeping nothing past its end (``VerificationError`` otherwise)."""
    try:
        value = json.loads(text or "{}")
    except (ValueError, RecursionError):
        raise VerificationError(f"{sender} has obligations that are not JSON") from None
    if not isinstance(value, dict):
        raise VerificationError(f"{sender} has obligations that are not an object")
    for key, kind in _OBLIGATION_TYPES.items():
        # bool is an int in Python, and not one in JSON.
        if key in value and (type(value[key]) is not kind):
            raise VerificationError(
                f"{sender} has obligations whose {key} is not a {kind.__name__}"
            )
    for key, agreed in agreement.obligations.items():
        if key != "delete_after_ns" and value.get(key) != agreed:
            raise VerificationError(f"{sender} drops or changes the agreed obligation {key}")
    # Deletion may come sooner than agreed, never later, and never after the agreement ends.
    latest = min(agreement.valid_until_ns, agreement.obligations.get("delete_after_ns", _NEVER))
    if "delete_after_ns" in agreement.obligations and "delete_after_ns" not in value:
        raise VerificationError(f"{sender} drops the agreed delete_after_ns")
    if value.get("delete_after_ns", latest) > latest:
        raise VerificationError(f"{sender} has a delete_after_ns past the agreement's ({latest})")
    return value


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


def _decide(
    obligations: Mapping[str, Any], now_ns: int, *, known: bool, revocation: str | None
) -> str | None:
    """Why a holding with ``obligations`` must go now, or ``None``, its agreement being
    ``known`` here or not and revoked by ``revocation`` (or not)."""
    delete_after = obligations.get("delete_after_ns")
    if isinstance(delete_after, int) and now_ns >= delete_after:
        return "delete_after"
    if not known:
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
        streams: StreamStore | None = None,
        delete_stream: Callable[[str, str], None] | None = None,
    ) -> None:
        """``streams`` and ``delete_stream`` (the consumer's deletion of a stream holding,
        logged: ``StreamConsumer.delete``) put stream holdings under the same sweep."""
        self._dir = holdings_dir
        self._store = store
        self._streams = streams
        self._delete_stream = delete_stream
        self._negotiations = negotiations
        self._audit = audit
        self._clock = clock
        self._lock = threading.Lock()

    def _why(self, agreement_id: str, obligations: Mapping[str, Any], now_ns: int) -> str | None:
        """Why a holding under ``agreement_id`` must go now, or ``None``."""
        delete_after = obligations.get("delete_after_ns")
        if isinstance(delete_after, int) and now_ns >= delete_after:
            return "delete_after"
        try:
            revocation = self._negotiations.by_agreement(agreement_id).revocation
        except NotFound:
            return _decide(obligations, now_ns, known=False, revocation=None)
        return _decide(obligations, now_ns, known=True, revocation=revocation)

    def sweep(self, agreement_id: str | None = None) -> list[tuple[str, str]]:
        """Delete every holding that must go now (only those under ``agreement_id`` when
        given); (transfer, reason) of each deletion, and (agreement, reason) of each stream
        holding's."""
        deleted: list[tuple[str, str]] = []
        with self._lock:
            now_ns = int(self._clock.now() * 1_000_000_000)
            for tid, _, text, known, revocation in self._store.kept_holdings(agreement_id):
                reason = _decide(json.loads(text), now_ns, known=known, revocation=revocation)
                if reason is None:
                    continue
                try:
                    t = self._store.get(tid)
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
            deleted += self._sweep_streams(now_ns, agreement_id)
        return deleted

    def sweep_soon(self, agreement_id: str) -> None:
        """Sweep the holdings under ``agreement_id`` now, on a thread of its own: for a
        signed revocation just received, so what it deletes goes at once rather than at
        the next periodic sweep, without holding up the provider's call (deleting a stream
        holding first lets its running subscription end)."""

        def run() -> None:
            try:
                self.sweep(agreement_id)
            except ConnectorError as exc:
                log.warning(
                    "holdings sweep failed", extra={"agreement": agreement_id, "reason": str(exc)}
                )

        threading.Thread(target=run, name="tds-holdings-revoked", daemon=True).start()

    def _sweep_streams(self, now_ns: int, agreement_id: str | None) -> list[tuple[str, str]]:
        if self._streams is None or self._delete_stream is None:
            return []
        deleted: list[tuple[str, str]] = []
        for held in self._streams.all(CONSUMER):
            if held.deleted_ms or agreement_id not in (None, held.agreement_id):
                continue
            reason = self._why(held.agreement_id, held.obligations, now_ns)
            if reason is None:
                continue
            try:
                self._delete_stream(held.agreement_id, reason)
            except (ConnectorError, OSError) as exc:
                log.warning(
                    "stream holding not deleted",
                    extra={"agreement": held.agreement_id, "reason": str(exc)},
                )
                continue
            deleted.append((held.agreement_id, reason))
        return deleted

"""The member's copy of the operator-signed directory, in its database (see
``connector.registry.directory``); kept apart so the CLI imports no database stack."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from connector.registry.directory import Directory, SignedDirectory, entries_digest
from connector.store.database import Database
from connector.store.models import DirectoryCacheRow

__all__ = ["DirectoryCache"]


class DirectoryCache:
    """The last verified directory, kept in the connector's database for its replicas.

    It stores text only; callers verify what they read (``verify_directory``), so the
    table is no more trusted than the network the pair first came from.
    """

    def __init__(self, db: Database, space: str) -> None:
        self._db = db
        self._space = space

    def head(self) -> str | None:
        """The stored head alone (cheap: compared with the one already verified, before
        a call to a member; the entries are not read, and no ORM session is opened)."""
        with self._db.transaction() as tx:
            row = tx.one("SELECT head FROM directory_cache WHERE space = ?", (self._space,))
        return str(row[0]) if row is not None else None

    def load(self) -> SignedDirectory | None:
        """The stored pair, unverified."""
        with self._db.session() as s:
            row = s.get(DirectoryCacheRow, self._space)
            return SignedDirectory(row.head, row.entries) if row is not None else None

    def save(
        self, fresh: Directory, is_newer: Callable[[SignedDirectory], bool], now_ms: int
    ) -> None:
        """Store ``fresh`` unless the row holds a newer pair (``is_newer(row_pair)``).

        The entries are rewritten only when the row's differ from ``fresh``'s, so a
        refresh of an unchanged directory writes one small head.
        """
        for _ in range(2):  # a replica inserting the first row at the same time
            try:
                with self._db.session() as s:
                    row = s.exec(
                        select(DirectoryCacheRow)
                        .where(DirectoryCacheRow.space == self._space)
                        .with_for_update()
                    ).first()
                    if row is None:
                        s.add(
                            DirectoryCacheRow(
                                space=self._space,
                                head=fresh.signed.head,
                                entries=fresh.signed.entries,
                                stored_ms=now_ms,
                            )
                        )
                        return
                    if is_newer(SignedDirectory(row.head, row.entries)):
                        return
                    row.head, row.stored_ms = fresh.signed.head, now_ms
                    if entries_digest(row.entries) != fresh.digest:
                        row.entries = fresh.signed.entries
                    s.add(row)
                    return
            except IntegrityError:
                continue

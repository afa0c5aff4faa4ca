"""The disclosure report's counts, stored (tables of migration 0020), so a connector that
starts again counts on from them instead of reading the year's receipts again.

What is stored is exactly what ``DisclosureTally`` keeps in memory: per year, how far the
log was counted (``disclosure_year.scanned``), per agreement named by a receipt its terms
and counts or that it is no public data (``disclosure_count``), and each counted receipt's
log index (``disclosure_receipt``, which the report lists so an auditor can check it).
The counts are a function of the log's first ``scanned`` entries (entries and stored
agreements never change), so counts loaded and counted on equal counts made afresh.

Saved optimistically: a save applies only if the stored mark is still the one these
counts were loaded at or last saved as; otherwise (a replica saved first) nothing is
written and the next report loads the stored counts and counts on from them.
"""

from __future__ import annotations

from connector.store.database import Database, RawTransaction
from connector.transfer.disclosure import Row, Terms, Year

__all__ = ["DisclosureStore"]

_COUNTS = (
    "agreement_id, public, consumer, product, registration_code, purpose, grant_id,"
    " transfers, bytes, computations, epsilon, windows, messages, stream_bytes"
)


class DisclosureStore:
    """The stored counts of the disclosure report, per year."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def scanned(self, year: int) -> int:
        """How far ``year``'s stored counts went (-1: none stored)."""
        with self._db.transaction() as tx:
            row = tx.one("SELECT scanned FROM disclosure_year WHERE year = ?", (year,))
        return int(row[0]) if row is not None else -1

    def load(self, year: int) -> Year:
        """``year``'s stored counts (empty, stored -1, when none are)."""
        with self._db.transaction() as tx:
            mark = tx.one("SELECT scanned FROM disclosure_year WHERE year = ?", (year,))
            if mark is None:
                return Year()
            counts = tx.all(
                f"SELECT {_COUNTS} FROM disclosure_count WHERE year = ?",  # noqa: S608
                (year,),
            )
            receipts = tx.all(
                "SELECT log_index, agreement_id FROM disclosure_receipt WHERE year = ?"
                " ORDER BY log_index",
                (year,),
            )
        counted = Year(scanned=int(mark[0]), stored=int(mark[0]))
        for agreement_id, public, consumer, product, code, purpose, grant, *n in counts:
            if not public:
                counted.not_public.add(str(agreement_id))
                continue
            transfers, size, computations, epsilon, windows, messages, stream_bytes = n
            counted.rows[str(agreement_id)] = Row(
                Terms(str(consumer), str(product), str(code), str(purpose), str(grant)),
                transfers=int(transfers), bytes=int(size), computations=int(computations),
                epsilon=float(epsilon), windows=int(windows), messages=int(messages),
                stream_bytes=int(stream_bytes),
            )  # fmt: skip
        for index, agreement_id in receipts:
            counted.rows[str(agreement_id)].receipt_log_indices.append(int(index))
        return counted

    def save(self, year: int, counted: Year) -> bool:
        """Store ``counted`` (the agreements counted since it was loaded or saved, and their
        new receipts; everything, if it was counted again from the start) if the stored
        mark is still ``counted.stored``; whether it was stored."""
        with self._db.transaction() as tx:
            tx.claim_write()
            mark = tx.one("SELECT scanned FROM disclosure_year WHERE year = ?", (year,))
            if (int(mark[0]) if mark is not None else -1) != counted.stored:
                return False  # a replica stored first: load that next time
            if counted.scanned < counted.stored:  # counted again from the start
                for table in ("disclosure_count", "disclosure_receipt"):
                    tx.execute(f"DELETE FROM {table} WHERE year = ?", (year,)).close()  # noqa: S608
                since, dirty = 0, set(counted.rows) | counted.not_public
            else:
                since, dirty = max(0, counted.stored), counted.dirty
            self._write(tx, year, counted, sorted(dirty), since)
            if mark is None:
                tx.execute(
                    "INSERT INTO disclosure_year (year, scanned) VALUES (?, ?)",
                    (year, counted.scanned),
                ).close()
            else:
                tx.execute(
                    "UPDATE disclosure_year SET scanned = ? WHERE year = ?",
                    (counted.scanned, year),
                ).close()
        counted.stored = counted.scanned
        counted.dirty.clear()
        return True

    @staticmethod
    def _write(tx: RawTransaction, year: int, counted: Year, dirty: list[str], since: int) -> None:
        """The rows of the ``dirty`` agreements (replaced) and their receipts from ``since``."""
        rows, receipts = [], []
        for agreement_id in dirty:
            row = counted.rows.get(agreement_id)
            if row is None:
                rows.append((year, agreement_id, False, "", "", "", "", "", 0, 0, 0, 0.0, 0, 0, 0))
                continue
            t = row.terms
            rows.append(
                (year, agreement_id, True, t.consumer, t.product, t.registration_code,
                 t.purpose, t.grant, row.transfers, row.bytes, row.computations, row.epsilon,
                 row.windows, row.messages, row.stream_bytes)
            )  # fmt: skip
            receipts += [(year, i, agreement_id) for i in row.receipt_log_indices if i >= since]
        tx.many(
            "DELETE FROM disclosure_count WHERE year = ? AND agreement_id = ?",
            [(year, agreement_id) for agreement_id in dirty],
        )
        tx.many(
            f"INSERT INTO disclosure_count (year, {_COUNTS})"  # noqa: S608
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        tx.many(
            "INSERT INTO disclosure_receipt (year, log_index, agreement_id) VALUES (?, ?, ?)",
            receipts,
        )

"""One strict grammar for the identifiers other connectors send, and paths they cannot leave.

A peer with a valid certificate is still untrusted input: every identifier it supplies
that reaches a path, a SQL statement or a log is checked here, at the boundary where it
arrives, against the exact form this code base generates (``tr-`` and 32 lower-case hex
digits for a transfer, as ``TransferProvider.start`` makes them, and so on). Anything else
is refused with the error type the caller names (``VerificationError`` for a peer's
answer, ``InvalidRequest`` for a peer's request) and a message saying what was expected.

Checking the grammar is not enough on its own for files: ``contained`` builds a path from
a directory and a name and refuses any result that resolves outside the directory, so a
name that slipped past a grammar still cannot write elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from connector.errors import ConnectorError, InvalidRequest
from connector.identity.names import LABEL

__all__ = [
    "AGREEMENT_ID",
    "COMPUTATION_ID",
    "DECISION_ID",
    "DELIVERED_FORMATS",
    "LABEL_ID",
    "PARTICIPANT_ID",
    "PROCESS_ID",
    "TRANSFER_ID",
    "IdGrammar",
    "check_format",
    "check_text",
    "contained",
    "printable",
]


@dataclass(frozen=True)
class IdGrammar:
    """One kind of identifier: its name in messages, its pattern and the form it takes."""

    what: str
    pattern: re.Pattern[str]
    form: str
    """The expected form, in words, for the error message."""

    def check(self, value: str, *, error: type[ConnectorError] = InvalidRequest) -> str:
        """``value`` if it matches exactly; otherwise raise ``error`` saying what was expected."""
        # fullmatch, not match: "$" would accept a trailing newline.
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            raise error(f"{self.what} {_shown(value)} is not {self.form}")
        return value


TRANSFER_ID = IdGrammar(
    "transfer id", re.compile(r"tr-[0-9a-f]{32}"), "'tr-' and 32 lower-case hex digits"
)
"""A transfer, as the provider names it (``tr-`` + ``uuid4().hex``)."""

AGREEMENT_ID = IdGrammar(
    "agreement id", re.compile(r"ag-[0-9a-f]{32}"), "'ag-' and 32 lower-case hex digits"
)
"""An agreement, as the provider's negotiator names it (``ag-`` + ``uuid4().hex``)."""

COMPUTATION_ID = IdGrammar(
    "computation id", re.compile(r"cp-[0-9a-f]{32}"), "'cp-' and 32 lower-case hex digits"
)
"""A computation, as the provider names it (``cp-`` + ``uuid4().hex``)."""

DECISION_ID = IdGrammar("decision id", re.compile(r"[0-9a-f]{32}"), "32 lower-case hex digits")
"""A policy decision (``Decision.id``: ``uuid4().hex``)."""

PARTICIPANT_ID = IdGrammar(
    "participant id",
    re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"),
    "1-63 lower-case letters, digits or '-', starting and ending with a letter or digit",
)
"""A participant (a DNS label: ``connector.identity.names.check_id``)."""

LABEL_ID = IdGrammar(
    "id",
    LABEL,
    "lower-case letters, digits, '.', '_' or '-' (at most 63, starting with a letter or digit)",
)
"""Products, offers and purposes (``connector.identity.names.LABEL``)."""

PROCESS_ID = IdGrammar(
    "process id",
    re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}"),
    "at most 200 letters, digits, '.', '_', ':' or '-' (a URN such as urn:uuid:…)",
)
"""A Dataspace Protocol process id a peer names (``consumerPid``, ``providerPid``): it
becomes a record key and a segment of the URL its messages are posted to, so no '/', '?',
'#' or '%'."""

DELIVERED_FORMATS = frozenset({"", "csv", "jsonl"})
"""What a transfer delivers: a file as it is (``""``) or the records of a table or sql
source (``connector.sources.delivered``)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_format(value: str, *, error: type[ConnectorError] = InvalidRequest) -> str:
    """A delivered format from the allow-list (``DELIVERED_FORMATS``), else ``error``."""
    if value not in DELIVERED_FORMATS:
        known = ", ".join(repr(f) for f in sorted(DELIVERED_FORMATS))
        raise error(f"format {_shown(value)} is not one of {known}")
    return value


def check_text(
    value: str, what: str, *, limit: int = 256, error: type[ConnectorError] = InvalidRequest
) -> str:
    """Free text a peer names (a table's column, a reason): 1 to ``limit`` characters and no
    control characters, so it cannot forge lines in a log or a terminal."""
    if not 0 < len(value) <= limit or _CONTROL.search(value):
        raise error(
            f"{what} {_shown(value)} must be 1 to {limit} characters without control characters"
        )
    return value


def printable(text: str, limit: int = 300) -> str:
    """``text`` (a peer's error message, say) with control characters replaced and cut to
    ``limit`` characters, for records and logs where it must not forge a line."""
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", text[:limit])


def contained(directory: Path, name: str, *, error: type[ConnectorError] = InvalidRequest) -> Path:
    """``directory / name``, refused unless it is a direct child of ``directory``.

    The check is on the resolved path (``..``, absolute names and symbolic links
    included), so whatever ``name`` holds the result stays inside ``directory``. Nothing is
    created: the caller creates ``directory`` itself, from configuration, never from a
    name a peer supplied.
    """
    base = directory.resolve()
    path = (base / name).resolve()
    if not name or path.parent != base or path.name != name:
        raise error(f"{_shown(name)} does not name a file directly inside {directory}")
    return path


def _shown(value: object) -> str:
    """A bounded, escaped rendering of untrusted input for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

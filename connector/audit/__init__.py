"""Evidence: the transparency log, checkpoints, witnessing, receipts and the auditor's tools.

The log is imported on first use: the auditor's offline tools and the CLI use the other
modules of this package without the database stack the log needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector import lazy

if TYPE_CHECKING:
    from connector.audit.log import AuditLog, TransparencyLog

__all__ = ["AuditLog", "TransparencyLog"]


__getattr__ = lazy.exports(__name__, {"AuditLog": "log", "TransparencyLog": "log"})

"""Evidence: the transparency log, checkpoints, witnessing, receipts and the auditor's tools."""

from connector.audit.log import AuditLog, TransparencyLog

__all__ = ["AuditLog", "TransparencyLog"]

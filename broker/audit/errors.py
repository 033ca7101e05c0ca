"""What the audit log raises, in the two families of ``schemas.errors``.

VerificationError (InputError)
└── TamperDetected        the files contradict themselves or their signatures: refuse,
                          tell the operator
InfrastructureError
└── AuditUnavailable      the disk failed: nothing was appended, the same batch may be
    │                     appended again
    └── AuditBusy         another process (the running auditor) holds the log
└── SearchNotRecorded     an IG search's own event was not acknowledged: the search was
                          not run (broker.audit.trail)
"""

from __future__ import annotations

from schemas.errors import InfrastructureError, VerificationError

__all__ = ["AuditBusy", "AuditUnavailable", "SearchNotRecorded", "TamperDetected"]


class TamperDetected(VerificationError):
    """The audit files contradict themselves or their signatures; the log refuses to go on.

    ``str()`` names the first bad place; ``cairn audit verify`` gives the full account.
    """


class AuditUnavailable(InfrastructureError):
    """The audit store could not write or read its files; nothing was appended."""


class AuditBusy(AuditUnavailable):
    """Another process (the running auditor) holds the log for writing."""


class SearchNotRecorded(InfrastructureError):
    """An IG search's own audit event was not acknowledged by Kafka, so the search was not run."""

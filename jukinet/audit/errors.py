"""Refusals of the audit service (mapped to status codes by the guard like every JukinetError)."""

from jukinet.domain.errors import JukinetError, PermissionDeniedError


class AuditDiverged(JukinetError):
    """The child's log no longer extends its last witnessed checkpoint: it is flagged to operators."""

    reason = "AUDIT_DIVERGED"
    code = "FAILED_PRECONDITION"


class AuditFlagged(JukinetError):
    """The child is flagged: no checkpoint is accepted until an operator of this node acknowledges."""

    reason = "AUDIT_FLAGGED"
    code = "FAILED_PRECONDITION"


class AuditResendFromGenesis(JukinetError):
    """The submitted digests start from a base this node cannot check: send them from the first entry."""

    reason = "AUDIT_RESEND_FROM_GENESIS"
    code = "ABORTED"


class AuditBadSignature(PermissionDeniedError):
    """The checkpoint's signature (or the certificate it names) does not hold."""

    reason = "AUDIT_BAD_SIGNATURE"

"""Domain errors. Each declares a stable `reason` and the canonical status `code` the guard (jukinet.rpc.guard)
answers it with; the reason also travels as google.rpc.ErrorInfo (jukinet.rpc.error_details)."""

from typing import ClassVar


class JukinetError(Exception):
    """Base of every error a caller may see. The message must tell a person what to do."""

    reason: ClassVar[str] = "JUKINET_ERROR"
    code: ClassVar[str] = "INTERNAL"  # canonical status code name (google.rpc.Code)


class InvalidField(JukinetError):
    """A request field is malformed; names the field and the problem."""

    reason = "INVALID_FIELD"
    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class PermissionDeniedError(JukinetError):
    """The caller's certificate does not allow this call; the message names the rule."""

    reason = "PERMISSION_DENIED"
    code = "PERMISSION_DENIED"


class UnauthenticatedError(JukinetError):
    """The caller presented no usable jukinet identity."""

    reason = "UNAUTHENTICATED"
    code = "UNAUTHENTICATED"


class CertificateRevoked(UnauthenticatedError):
    reason = "CERT_REVOKED"


class CertificateExpired(UnauthenticatedError):
    reason = "CERT_EXPIRED"


class WrongRole(PermissionDeniedError):
    """The caller's role (or operator role) may not call this method on this node."""

    reason = "WRONG_ROLE"


class WrongOrigin(PermissionDeniedError):
    """The caller may not speak for this municipality."""

    reason = "WRONG_ORIGIN"


class WrongPurpose(PermissionDeniedError):
    """The statutory purpose is not granted to this agency."""

    reason = "WRONG_PURPOSE"


class NotFoundError(JukinetError):
    """Nothing is recorded under the given key."""

    reason = "NOT_FOUND"
    code = "NOT_FOUND"


class InconsistentRecords(JukinetError):
    """Stored records contradict an invariant the network relies on (e.g. a code chain that loops)."""

    reason = "INCONSISTENT_RECORDS"
    code = "INTERNAL"


class SearchTooBroad(JukinetError):
    """More residents match than a search may return: add keys, never a truncated list."""

    reason = "SEARCH_TOO_BROAD"
    code = "FAILED_PRECONDITION"


class QuotaExceeded(JukinetError):
    """An agency went over its request rate or daily item quota."""

    reason = "QUOTA_EXCEEDED"
    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        """`retry_after_s` None: waiting will not help (the request alone is over the quota)."""
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotRegistered(JukinetError):
    """The resident is not (or no longer) registered at this municipality."""

    reason = "NOT_REGISTERED"
    code = "FAILED_PRECONDITION"


class AlreadyResolved(JukinetError):
    """An operator case (a code anomaly) was closed before: closing it again would overwrite who did what."""

    reason = "ALREADY_RESOLVED"
    code = "FAILED_PRECONDITION"


class NotOnThisNode(JukinetError):
    """The call is served by another kind of node (say, code reconciliation: the center only)."""

    reason = "NOT_ON_THIS_NODE"
    code = "FAILED_PRECONDITION"


class RequestIdReused(JukinetError):
    """A request id seen before, now carrying another change: a retry must repeat the change exactly."""

    reason = "REQUEST_ID_REUSED"
    code = "ALREADY_EXISTS"


class AlreadyRegistered(JukinetError):
    """A create event for a resident this municipality already holds."""

    reason = "ALREADY_REGISTERED"
    code = "FAILED_PRECONDITION"


class SequenceGap(JukinetError):
    """A relay batch does not continue the receiver's cursor for its origin."""

    reason = "SEQUENCE_GAP"
    code = "FAILED_PRECONDITION"

    def __init__(self, origin: str, expected: int, got: int) -> None:
        super().__init__(f"origin {origin}: expected seq {expected}, got {got}; resume from the receiver's cursor")
        self.origin = origin
        self.expected = expected
        self.got = got


class ReplayMismatch(JukinetError):
    """A relayed event repeats a sequence number this node applied, with other content: the two logs diverge."""

    reason = "REPLAY_MISMATCH"
    code = "FAILED_PRECONDITION"


class CodePoolExhausted(JukinetError):
    """No free 住民票コード left in this municipality's pool; a refill has been requested."""

    reason = "CODE_POOL_EXHAUSTED"
    code = "UNAVAILABLE"


class UpstreamRefusedArgument(JukinetError):
    """The next tier refused a request relayed to it as malformed; the message carries its words."""

    reason = "UPSTREAM_REFUSED"
    code = "INVALID_ARGUMENT"


class UpstreamRefusedPermission(JukinetError):
    """The next tier refused a request relayed to it as not permitted; the message carries its words."""

    reason = "UPSTREAM_REFUSED"
    code = "PERMISSION_DENIED"


class UpstreamUnavailable(JukinetError):
    """The next tier cannot be reached; retry later (the only error clients retry by themselves)."""

    reason = "UPSTREAM_UNAVAILABLE"
    code = "UNAVAILABLE"

"""Machine-readable details of a refused call, in gRPC's rich error model.

Every refusal carries, besides its status code and the message a person reads, a `google.rpc.Status` in
the `grpc-status-details-bin` trailer (what grpcio-status, grpc-java's StatusProto and grpc-go's
status.FromError read), holding:

- `google.rpc.ErrorInfo`: the stable `reason` of the error (WRONG_PURPOSE, QUOTA_EXCEEDED, INVALID_FIELD …,
  see jukinet.domain.errors), domain "jukinet", and the request id, so a program can branch on the reason
  and an operator can find the access-log entry;
- `google.rpc.BadRequest` for a malformed field: which field and what is wrong with it;
- `google.rpc.RetryInfo` for a quota that waiting will lift: how long to wait before retrying (none when the
  request alone is over the daily quota: it must be split).

The guard answers refusals with these details (a prefecture relaying the center's refusal of a code-pool
request too, as UPSTREAM_REFUSED); so does the lenient request parser, for an undecodable request.
"""

import datetime as dt

import grpc
from google.rpc import error_details_pb2, status_pb2

from jukinet.domain.errors import InvalidField, JukinetError, QuotaExceeded

DETAILS_KEY = "grpc-status-details-bin"
DOMAIN = "jukinet"

Trailer = tuple[tuple[str, bytes], ...]


def refusal_trailer(
    code: grpc.StatusCode, message: str, *, request_id: str, error: JukinetError | None = None
) -> Trailer:
    """The trailing metadata of a refusal; `message` must be the details the call is aborted with. The
    reason is the error's, or the status code's name for a failure that is no JukinetError (INTERNAL)."""
    status = status_pb2.Status(code=code.value[0], message=message)
    metadata = {"request_id": request_id} if request_id else {}
    reason = error.reason if error is not None else code.name
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    status.details.add().Pack(info)
    if isinstance(error, InvalidField):
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.problem)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    if isinstance(error, QuotaExceeded) and error.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(dt.timedelta(seconds=max(0.0, error.retry_after_s)))
        status.details.add().Pack(retry)
    return ((DETAILS_KEY, status.SerializeToString()),)


def details_of(trailing_metadata: object) -> status_pb2.Status | None:
    """The rich status in a call's trailing metadata (a client's view), or None."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key == DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def reason_of(trailing_metadata: object) -> str | None:
    """The ErrorInfo reason of a refused call (a client's view), or None when it carries none."""
    status = details_of(trailing_metadata)
    info = error_details_pb2.ErrorInfo()
    for detail in status.details if status is not None else ():
        if detail.Unpack(info):
            return str(info.reason)
    return None

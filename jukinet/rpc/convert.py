"""Proto <-> domain converters. Validation happens here, at the edge, through jukinet.domain.validate."""

import datetime as dt
import time
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.timestamp_pb2 import Timestamp

from jukinet.domain import validate
from jukinet.domain.errors import InvalidField, JukinetError
from jukinet.domain.model import EventRow, IdentityItems, RegisterChange, from_us, to_us
from jukinet.services.intake import Accepted, Outcome, Refused
from jukinet.wire.v1 import register_pb2, types_pb2


def items_from_pb(pb: types_pb2.IdentityItems, prefix: str, *, today: dt.date | None = None) -> IdentityItems:
    return validate.identity_items(
        prefix,
        name=pb.name,
        alias=pb.alias,
        birth_date=pb.birth_date,
        sex_value=int(pb.sex),
        address=pb.address,
        today=today,
    )


def register_change_from_pb(pb: register_pb2.RegisterChange, *, today: dt.date | None = None) -> RegisterChange:
    """Raises InvalidField naming the first bad field."""
    items = items_from_pb(pb.items, "items.", today=today) if pb.HasField("items") else None
    return validate.register_change(
        request_id_value=pb.request_id,
        reason_value=int(pb.reason),
        effective_date=pb.effective_date,
        resident_code_value=pb.resident_code,
        items=items,
        today=today,
    )


def register_change_or_refusal(pb: register_pb2.RegisterChange) -> RegisterChange | Refused:
    try:
        return register_change_from_pb(pb)
    except InvalidField as error:
        # Echoed and access-logged in the batch's transaction: PostgreSQL text cannot hold NUL, and one
        # bad request_id must not fail the changes around it.
        return Refused(pb.request_id[:64].replace("\x00", "\ufffd"), error)


def timestamp(instant: dt.datetime) -> Timestamp:
    micros = to_us(instant)
    return Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def event_row_to_pb(row: Any) -> types_pb2.ChangeEvent:
    """An `event` table row as a message of its own (add_event_rows fills a request's events in place)."""
    pb = types_pb2.ChangeEvent()
    _fill_event(pb, row)
    return pb


def add_event_rows(events: RepeatedCompositeFieldContainer[types_pb2.ChangeEvent], rows: Iterable[Any]) -> None:
    """Appends `event` table rows to a repeated ChangeEvent field, each built in place inside it: the relay
    sender's hot path. A message built on its own and then added is copied into the field, which cost a
    municipality's sender 4.6 µs an event against 2.1 µs in place."""
    add = events.add
    for row in rows:
        _fill_event(add(), row)


def _fill_event(pb: types_pb2.ChangeEvent, row: Any) -> None:
    pb.seq = row.seq
    pb.resident_code = row.resident_code
    pb.previous_code = row.previous_code
    pb.reason = row.reason
    pb.effective_date = row.effective_date
    micros = row.recorded_us
    recorded = pb.recorded_time
    recorded.seconds = micros // 1_000_000
    recorded.nanos = (micros % 1_000_000) * 1000
    out = pb.items
    out.name = row.name
    out.alias = row.alias
    out.birth_date = row.birth_date
    out.sex = row.sex
    out.address = row.address


_ONE_DAY = dt.timedelta(days=1)
_EARLIEST_RECORDING_S = -2_208_988_800  # 1900-01-01T00:00:00Z in seconds since the epoch
_AHEAD_S = 86_400  # the sender's clock may run a day ahead


def _recorded_us(pb: types_pb2.ChangeEvent) -> int:
    """The recording instant in microseconds since the epoch (sub-microsecond nanos dropped, as
    Timestamp.ToDatetime does), from 1900 to tomorrow. Checked on the integer fields: this runs for every
    relayed event."""
    stamp = pb.recorded_time
    seconds, nanos = stamp.seconds, stamp.nanos
    if not 0 <= nanos < 1_000_000_000:
        raise InvalidField("recorded_time", f"nanos {nanos} is not between 0 and 999,999,999")
    if not _EARLIEST_RECORDING_S <= seconds <= time.time() + _AHEAD_S:
        try:
            shown = from_us(seconds * 1_000_000).isoformat()
        except OverflowError:
            shown = f"{seconds} seconds from 1970"
        raise InvalidField("recorded_time", f"{shown} is out of range (1900 to tomorrow)")
    return seconds * 1_000_000 + nanos // 1000


def event_row_from_pb(
    origin: str, pb: types_pb2.ChangeEvent, *, latest_effective: dt.date
) -> tuple[EventRow, types_pb2.ChangeEvent]:
    """A relayed event, validated again at the receiving edge, and the event as the next hop must receive
    it: `pb` itself where validation kept every value as sent (the common case: no rebuilding on the
    prefecture's hot path), else a message rebuilt from the row (NFC normalization, nanoseconds below a
    microsecond). A refusal names the event and the field ("event 132080#5: items.name"). `origin` must
    already be validated, once per batch; `latest_effective` is today (JST) plus a day, as the sender's
    clock may run ahead."""
    try:
        if not pb.HasField("items"):
            raise InvalidField("items", "are required")
        if not pb.HasField("recorded_time"):
            raise InvalidField("recorded_time", "is required")
        items = pb.items
        name, alias, address = items.name, items.alias, items.address
        row = validate.relayed_event(
            origin=origin,
            seq=pb.seq,
            resident_code_value=pb.resident_code,
            previous_code=pb.previous_code,
            reason_value=pb.reason,
            effective_date=pb.effective_date,
            recorded_us=_recorded_us(pb),
            name=name,
            alias=alias,
            birth_date=items.birth_date,
            sex_value=items.sex,
            address=address,
            latest_effective=latest_effective,
        )
    except InvalidField as error:  # field names are built only for a refusal (the hot path builds none)
        raise InvalidField(f"event {origin}#{pb.seq}: {error.field}", error.problem) from None
    as_sent = row.name == name and row.alias == alias and row.address == address and pb.recorded_time.nanos % 1000 == 0
    return row, pb if as_sent else event_row_to_pb(row)


def relayed_events_from_pb(
    origin: str, pbs: Sequence[types_pb2.ChangeEvent], *, today: dt.date | None = None
) -> tuple[list[EventRow], list[types_pb2.ChangeEvent]]:
    """A relayed batch, validated (event_row_from_pb): its rows, and its events as the next hop must receive
    them. The caller discards unknown fields from the request first, so nothing unvalidated is passed on."""
    latest_effective = (today or validate.today_jst()) + _ONE_DAY
    checked = [event_row_from_pb(origin, pb, latest_effective=latest_effective) for pb in pbs]
    return [row for row, _ in checked], [forward for _, forward in checked]


_CODE_NUMBERS = {
    "OK": 0,
    "INVALID_ARGUMENT": 3,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}


def error_number(error: JukinetError) -> int:
    return _CODE_NUMBERS[error.code]


def outcome_to_pb(outcome: Outcome) -> register_pb2.ChangeResult:
    pb = register_pb2.ChangeResult()
    _fill_outcome(pb, outcome)
    return pb


def add_outcomes(
    results: RepeatedCompositeFieldContainer[register_pb2.ChangeResult], outcomes: Iterable[Outcome]
) -> None:
    """Appends one ChangeResult per outcome, each built in place (per change: 0.3 against 0.9 µs)."""
    add = results.add
    for outcome in outcomes:
        _fill_outcome(add(), outcome)


def _fill_outcome(pb: register_pb2.ChangeResult, outcome: Outcome) -> None:
    pb.request_id = outcome.request_id
    if isinstance(outcome, Accepted):
        pb.resident_code = outcome.resident_code
        pb.seq = outcome.seq
        return
    error = outcome.error
    pb.status_code = error_number(error)
    pb.message = str(error)
    pb.error_reason = error.reason
    if isinstance(error, InvalidField):
        pb.field = error.field

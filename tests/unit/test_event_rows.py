"""The relay's flat hot path (EventRow) agrees with the domain objects it stands in for."""

import dataclasses
import datetime as dt
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jukinet.codes import resident_code_from_body
from jukinet.domain.errors import InvalidField, NotRegistered
from jukinet.domain.model import ChangeEvent, ChangeReason, IdentityItems, Sex, event_row
from jukinet.domain.registry_state import latest_registration_rows, registration_rows_from, registrations_from
from jukinet.rpc.convert import add_event_rows, add_outcomes, event_row_to_pb, outcome_to_pb, relayed_events_from_pb
from jukinet.services.intake import Accepted, Outcome, Refused
from jukinet.storage import center_tx, rows
from jukinet.wire.v1 import register_pb2, relay_pb2, types_pb2

TODAY = dt.date(2026, 11, 20)
T0 = dt.datetime(2026, 11, 1, 9, 0, 0, 123456, tzinfo=dt.UTC)

codes = st.integers(0, 10**10 - 1).map(lambda n: resident_code_from_body(f"{n:010d}"))


@st.composite
def events(draw: st.DrawFn, seq: int = 1) -> ChangeEvent:
    reason = draw(st.sampled_from(list(ChangeReason)))
    return ChangeEvent(
        origin=draw(st.sampled_from(["132080", "012084"])),
        seq=seq,
        resident_code=draw(codes),
        previous_code=draw(codes) if reason is ChangeReason.CODE_CHANGE else "",
        reason=reason,
        effective_date=draw(st.dates(dt.date(2000, 1, 1), TODAY)),
        recorded_at=T0 + dt.timedelta(microseconds=draw(st.integers(0, 10**12))),
        items=IdentityItems(
            name=draw(st.sampled_from(["山田\u3000花子", "佐藤 太郎", "Smith John"])),
            birth_date=draw(st.dates(dt.date(1900, 1, 1), dt.date(1999, 12, 31))),
            sex=draw(st.sampled_from(list(Sex))),
            address=draw(st.sampled_from(["東京都調布市小島町1番", "北海道北見市1-2-3"])),
            alias=draw(st.sampled_from(["", "ジョン"])),
        ),
    )


@given(st.lists(events(), min_size=1, max_size=6))
def test_flat_registrations_match_the_domain_rules(run: list[ChangeEvent]) -> None:
    run = [dataclasses.replace(e, seq=i + 1) for i, e in enumerate(run)]
    flat = [event_row(e) for e in run]
    for event, row in zip(run, flat, strict=True):
        assert rows.event_from_tuple((*row, None)) == event
    for event, row in zip(run, flat, strict=True):
        assert registration_rows_from(row) == [rows.registration_tuple(r) for r in registrations_from(event)]
    latest = {(r.resident_code, r.municipality): r for event in run for r in registrations_from(event)}
    assert latest_registration_rows(flat) == [rows.registration_tuple(r) for r in latest.values()]


def test_the_center_reads_the_search_columns_at_the_right_positions() -> None:
    assert rows.REGISTRATION_COLUMNS[center_tx._NAME] == "name"
    assert rows.REGISTRATION_COLUMNS[center_tx._ADDRESS] == "address"


def _pb(name: str = "山田\u3000花子", nanos: int = 123_456_000) -> types_pb2.ChangeEvent:
    event = ChangeEvent(
        "132080",
        7,
        resident_code_from_body("1234567890"),
        ChangeReason.NAME_CHANGE,
        dt.date(2026, 11, 2),
        T0,
        IdentityItems(name, dt.date(1980, 1, 1), Sex.FEMALE, "東京都調布市小島町1番"),
    )
    pb = event_row_to_pb(event_row(event))
    pb.recorded_time.nanos = nanos
    return pb


def test_an_event_validated_as_sent_is_forwarded_as_received() -> None:
    pb = _pb()
    [row], [forward] = relayed_events_from_pb("132080", [pb], today=TODAY)
    assert forward is pb
    assert row.recorded_us == (T0 - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    assert event_row_to_pb(row) == pb


@pytest.mark.parametrize(
    "pb",
    [
        _pb(name=unicodedata.normalize("NFD", "山田\u3000ガ子")),  # NFC-normalized on the way in
        _pb(nanos=123_456_789),  # stored to the microsecond
    ],
    ids=["nfd-name", "nanoseconds"],
)
def test_an_event_changed_by_validation_is_forwarded_as_stored(pb: types_pb2.ChangeEvent) -> None:
    [row], [forward] = relayed_events_from_pb("132080", [pb], today=TODAY)
    assert forward is not pb
    assert forward == event_row_to_pb(row)
    assert forward.items.name == unicodedata.normalize("NFC", pb.items.name)
    assert forward.recorded_time.nanos == 123_456_000


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda pb: setattr(pb, "seq", 0), "seq"),
        (lambda pb: setattr(pb, "reason", 99), "reason"),
        (lambda pb: setattr(pb, "previous_code", "12345678903"), "previous_code"),
        (lambda pb: setattr(pb, "resident_code", "12345678901"), "resident_code"),
        (lambda pb: setattr(pb, "effective_date", "2026-02-30"), "effective_date"),
        (lambda pb: setattr(pb.items, "name", ""), "items.name"),
        (lambda pb: setattr(pb.items, "alias", "a\x07"), "items.alias"),
        (lambda pb: setattr(pb.items, "birth_date", "1980-1-1"), "items.birth_date"),
        (lambda pb: setattr(pb.items, "sex", 7), "items.sex"),
        (lambda pb: setattr(pb.items, "address", "x" * 201), "items.address"),
        (lambda pb: setattr(pb.recorded_time, "seconds", 10**11), "recorded_time"),
        (lambda pb: pb.ClearField("items"), "items"),
    ],
)
def test_a_bad_relayed_field_is_refused_by_name(change: object, field: str) -> None:
    pb = _pb()
    change(pb)  # type: ignore[operator]
    with pytest.raises(InvalidField) as refused:
        relayed_events_from_pb("132080", [pb], today=TODAY)
    assert refused.value.field == f"event 132080#{pb.seq}: {field}"


@given(st.lists(events(), min_size=1, max_size=6))
def test_rows_added_in_place_carry_every_value_of_the_event(run: list[ChangeEvent]) -> None:
    request = relay_pb2.PushEventsRequest(origin="132080")
    add_event_rows(request.events, [event_row(e) for e in run])
    assert len(request.events) == len(run)
    for event, pb in zip(run, request.events, strict=True):
        assert pb == event_row_to_pb(event_row(event))
        assert (pb.seq, pb.resident_code, pb.previous_code, pb.reason, pb.effective_date) == (
            event.seq,
            event.resident_code,
            event.previous_code,
            int(event.reason),
            event.effective_date.isoformat(),
        )
        assert pb.recorded_time.ToDatetime(tzinfo=dt.UTC) == event.recorded_at
        items = event.items
        assert (pb.items.name, pb.items.alias, pb.items.birth_date, pb.items.sex, pb.items.address) == (
            items.name,
            items.alias,
            items.birth_date.isoformat(),
            int(items.sex),
            items.address,
        )


def test_outcomes_added_in_place_answer_like_the_single_change_answer() -> None:
    outcomes: list[Outcome] = [
        Accepted("r1", resident_code_from_body("1234567890"), 41),
        Refused("r2", InvalidField("items.name", "is required")),
        Refused("r3", NotRegistered("resident 12345678903 is not registered at 132080")),
    ]
    response = register_pb2.RecordChangesResponse()
    add_outcomes(response.results, outcomes)
    assert list(response.results) == [outcome_to_pb(o) for o in outcomes]
    accepted, invalid, unknown = response.results
    assert (accepted.request_id, accepted.status_code, accepted.resident_code, accepted.seq) == (
        "r1",
        0,
        "12345678903",
        41,
    )
    assert accepted.message == accepted.field == accepted.error_reason == ""
    assert (invalid.status_code, invalid.field, invalid.error_reason) == (3, "items.name", "INVALID_FIELD")
    assert "is required" in invalid.message
    assert (unknown.status_code, unknown.field, unknown.error_reason) == (
        9,
        "",
        NotRegistered.reason,
    )  # FAILED_PRECONDITION
    assert unknown.resident_code == ""
    assert unknown.seq == 0

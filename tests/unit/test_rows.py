"""Row conversions: a registration or event written as a row reads back equal (the readers build the
dataclasses positionally, so a reordered field must fail here, not in an agency's answer)."""

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from jukinet.domain.model import ChangeEvent, ChangeReason, IdentityItems, Registration, Sex, event_row
from jukinet.storage import rows

_text = st.text(min_size=1, max_size=20)
_codes = st.from_regex(r"[0-9]{11}", fullmatch=True)
_dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 12, 31))
_instants = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)
_items = st.builds(  # keywords throughout: the readers under test build these positionally
    IdentityItems,
    name=_text,
    birth_date=_dates,
    sex=st.sampled_from(Sex),
    address=_text,
    alias=st.one_of(st.just(""), _text),
)


@given(
    code=_codes,
    municipality=st.sampled_from(["132080", "012084"]),
    items=_items,
    active=st.booleans(),
    reason=st.sampled_from(ChangeReason),
    effective=_dates,
    recorded=_instants,
    seq=st.integers(min_value=1, max_value=2**40),
    replaced_by=st.one_of(st.just(""), _codes),
)
def test_registration_reads_back_equal(
    code: str,
    municipality: str,
    items: IdentityItems,
    active: bool,
    reason: ChangeReason,
    effective: dt.date,
    recorded: dt.datetime,
    seq: int,
    replaced_by: str,
) -> None:
    reg = Registration(
        resident_code=code,
        municipality=municipality,
        items=items,
        active=active,
        reason=reason,
        effective_date=effective,
        recorded_at=recorded,
        seq=seq,
        replaced_by=replaced_by,
    )
    assert rows.registration_from_tuple(rows.registration_tuple(reg)) == reg


@given(
    origin=st.sampled_from(["132080", "012084"]),
    seq=st.integers(min_value=1, max_value=2**40),
    code=_codes,
    previous=st.one_of(st.just(""), _codes),
    reason=st.sampled_from(ChangeReason),
    effective=_dates,
    recorded=_instants,
    items=_items,
    request_id=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
)
def test_event_reads_back_equal(
    origin: str,
    seq: int,
    code: str,
    previous: str,
    reason: ChangeReason,
    effective: dt.date,
    recorded: dt.datetime,
    items: IdentityItems,
    request_id: str | None,
) -> None:
    event = ChangeEvent(
        origin=origin,
        seq=seq,
        resident_code=code,
        reason=reason,
        effective_date=effective,
        recorded_at=recorded,
        items=items,
        previous_code=previous,
    )
    assert rows.event_from_tuple((*event_row(event), request_id)) == event

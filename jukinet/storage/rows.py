"""Conversions between domain objects and table rows (plain dicts and Row objects)."""

import datetime as dt
from typing import Any

from jukinet.domain.model import ChangeEvent, ChangeReason, IdentityItems, Registration, Sex

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_us(instant: dt.datetime) -> int:
    return (instant - _EPOCH) // dt.timedelta(microseconds=1)


def from_us(micros: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=micros)


def event_row(event: ChangeEvent, request_id: str | None = None) -> dict[str, Any]:
    items = event.items
    return {
        "origin": event.origin,
        "seq": event.seq,
        "resident_code": event.resident_code,
        "previous_code": event.previous_code,
        "reason": int(event.reason),
        "effective_date": event.effective_date.isoformat(),
        "recorded_us": to_us(event.recorded_at),
        "name": items.name,
        "alias": items.alias,
        "birth_date": items.birth_date.isoformat(),
        "sex": int(items.sex),
        "address": items.address,
        "request_id": request_id,
    }


def items_from(row: Any) -> IdentityItems:
    return IdentityItems(
        name=row.name,
        alias=row.alias,
        birth_date=dt.date.fromisoformat(row.birth_date),
        sex=Sex(row.sex),
        address=row.address,
    )


def event_from(row: Any) -> ChangeEvent:
    return ChangeEvent(
        origin=row.origin,
        seq=row.seq,
        resident_code=row.resident_code,
        previous_code=row.previous_code,
        reason=ChangeReason(row.reason),
        effective_date=dt.date.fromisoformat(row.effective_date),
        recorded_at=from_us(row.recorded_us),
        items=items_from(row),
    )


def registration_row(reg: Registration) -> dict[str, Any]:
    items = reg.items
    return {
        "resident_code": reg.resident_code,
        "municipality": reg.municipality,
        "active": reg.active,
        "reason": int(reg.reason),
        "effective_date": reg.effective_date.isoformat(),
        "recorded_us": to_us(reg.recorded_at),
        "seq": reg.seq,
        "replaced_by": reg.replaced_by,
        "name": items.name,
        "alias": items.alias,
        "birth_date": items.birth_date.isoformat(),
        "sex": int(items.sex),
        "address": items.address,
    }


def registration_from(row: Any) -> Registration:
    return Registration(
        resident_code=row.resident_code,
        municipality=row.municipality,
        items=items_from(row),
        active=bool(row.active),
        reason=ChangeReason(row.reason),
        effective_date=dt.date.fromisoformat(row.effective_date),
        recorded_at=from_us(row.recorded_us),
        seq=row.seq,
        replaced_by=row.replaced_by,
    )

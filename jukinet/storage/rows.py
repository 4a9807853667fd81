"""Conversions between domain objects and table rows (plain dicts and Row objects)."""

import datetime as dt
from typing import Any

from jukinet.domain.model import (
    ChangeEvent,
    ChangeReason,
    IdentityItems,
    Registration,
    RegistrationRow,
    Sex,
)
from jukinet.domain.model import from_us as from_us  # stored instants: re-exported for the storage callers
from jukinet.domain.model import to_us as to_us

# Stored numbers to enum members by dict: calling the enum class costs several times more, on every row read.
_SEX = {int(member): member for member in Sex}
_REASON = {int(member): member for member in ChangeReason}


EVENT_COLUMNS = (
    "origin", "seq", "resident_code", "previous_code", "reason", "effective_date", "recorded_us",
    "name", "alias", "birth_date", "sex", "address", "request_id",
)  # fmt: skip
REGISTRATION_COLUMNS = (
    "resident_code", "municipality", "active", "reason", "effective_date", "recorded_us", "seq", "replaced_by",
    "name", "alias", "birth_date", "sex", "address",
)  # fmt: skip


def registration_tuple(reg: Registration) -> RegistrationRow:
    """Values in REGISTRATION_COLUMNS order."""
    items = reg.items
    return (
        reg.resident_code, reg.municipality, reg.active, int(reg.reason), reg.effective_date.isoformat(),
        to_us(reg.recorded_at), reg.seq, reg.replaced_by, items.name, items.alias, items.birth_date.isoformat(),
        int(items.sex), items.address,
    )  # fmt: skip


def event_from(row: Any) -> ChangeEvent:
    """An event from a SQLAlchemy Row that holds the event table's columns (read by name)."""
    mapping = row._mapping
    return event_from_tuple([mapping[column] for column in EVENT_COLUMNS])


def registration_from_tuple(values: Any) -> Registration:
    """A registration from a driver row in REGISTRATION_COLUMNS order."""
    code, municipality, active, reason, effective, recorded_us, seq, replaced_by, name, alias, birth, sex, address = (
        values
    )
    # Positional arguments, in the dataclasses' field order: keywords cost about twice as much per object,
    # and this runs for every record an agency receives.
    return Registration(
        code,
        municipality,
        IdentityItems(name, dt.date.fromisoformat(birth), _SEX[sex], address, alias),
        bool(active),
        _REASON[reason],
        dt.date.fromisoformat(effective),
        from_us(recorded_us),
        seq,
        replaced_by,
    )


def event_from_tuple(values: Any) -> ChangeEvent:
    """An event from a driver row in EVENT_COLUMNS order (the request id, last, is not part of it)."""
    origin, seq, code, previous, reason, effective, recorded_us, name, alias, birth, sex, address, _ = values
    return ChangeEvent(  # positional, in field order (see registration_from_tuple)
        origin,
        seq,
        code,
        _REASON[reason],
        dt.date.fromisoformat(effective),
        from_us(recorded_us),
        IdentityItems(name, dt.date.fromisoformat(birth), _SEX[sex], address, alias),
        previous,
    )

"""本人確認情報 and the change events that carry it between tiers."""

import datetime as dt
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import NamedTuple


class Sex(IntEnum):
    """Numbers match jukinet.wire.v1.Sex; 0 (unspecified) is never a valid value."""

    MALE = 1
    FEMALE = 2


class ChangeReason(IntEnum):
    """異動事由 (JUKINET.md §4.2). Numbers match jukinet.wire.v1.ChangeReason; 0 is never valid.
    The official wire code list could not be verified; these are our own stable numbers."""

    BIRTH = 1  # 出生 (create)
    MOVE_IN = 2  # 転入 (create)
    SPECIAL_MOVE_IN = 3  # 特例転入 (create)
    ENTRY_FROM_ABROAD = 4  # 国外からの転入 / foreign resident newly registered (create)
    EX_OFFICIO_RECORD = 5  # 職権記載 (create)
    MOVE_OUT = 6  # 転出 (delete)
    EMIGRATION = 7  # 国外転出 (delete)
    DEATH = 8  # 死亡 (delete)
    EX_OFFICIO_DELETION = 9  # 職権消除 (delete)
    INTRA_MOVE = 10  # 転居 (correct)
    NAME_CHANGE = 11  # 氏名変更 (correct)
    EX_OFFICIO_CORRECTION = 12  # 職権修正 (correct)
    CODE_CHANGE = 13  # 住民票コード変更 (correct; new code from the pool, old code retired)
    ADDRESS_RENUMBERING = 14  # 住居表示変更 (correct)


class Effect(Enum):
    CREATE = "create"  # 記載
    DELETE = "delete"  # 消除
    CORRECT = "correct"  # 記載の修正


CREATE_REASONS = frozenset(
    {
        ChangeReason.BIRTH,
        ChangeReason.MOVE_IN,
        ChangeReason.SPECIAL_MOVE_IN,
        ChangeReason.ENTRY_FROM_ABROAD,
        ChangeReason.EX_OFFICIO_RECORD,
    }
)
DELETE_REASONS = frozenset(
    {ChangeReason.MOVE_OUT, ChangeReason.EMIGRATION, ChangeReason.DEATH, ChangeReason.EX_OFFICIO_DELETION}
)
# Create reasons whose resident usually has no code yet: the node assigns one from its pool.
ASSIGNING_REASONS = frozenset({ChangeReason.BIRTH, ChangeReason.ENTRY_FROM_ABROAD, ChangeReason.EX_OFFICIO_RECORD})


def effect_of(reason: ChangeReason) -> Effect:
    if reason in CREATE_REASONS:
        return Effect.CREATE
    if reason in DELETE_REASONS:
        return Effect.DELETE
    return Effect.CORRECT


@dataclass(frozen=True, slots=True)
class IdentityItems:
    """The four items (name, birth date, sex, address) plus 通称 where recorded. Strings are NFC."""

    name: str
    birth_date: dt.date
    sex: Sex
    address: str
    alias: str = ""


@dataclass(frozen=True, slots=True)
class RegisterChange:
    """One change pushed by the municipal register system, already validated at the edge.

    `items` is None only for deletions and code changes, where the node uses its current record."""

    request_id: str
    reason: ChangeReason
    effective_date: dt.date
    resident_code: str | None
    items: IdentityItems | None


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One applied change as it crosses the tiers, numbered per origin municipality."""

    origin: str
    seq: int
    resident_code: str
    reason: ChangeReason
    effective_date: dt.date
    recorded_at: dt.datetime
    items: IdentityItems
    previous_code: str = ""


class EventRow(NamedTuple):
    """A validated change event as flat stored values: dates as YYYY-MM-DD, reason and sex as their
    numbers, the recording instant in microseconds since the epoch (storage.rows.EVENT_COLUMNS order).

    The relay's receiving hot path (prefecture, center) validates straight into this form and stores
    and forwards it without building domain objects; storage.rows.event_from_tuple makes a ChangeEvent."""

    origin: str
    seq: int
    resident_code: str
    previous_code: str
    reason: int
    effective_date: str
    recorded_us: int
    name: str
    alias: str
    birth_date: str
    sex: int
    address: str


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def to_us(instant: dt.datetime) -> int:
    """An aware instant as whole microseconds since the epoch (how events and logs store time)."""
    return (instant - _EPOCH) // _MICROSECOND


def from_us(micros: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=micros)


def event_row(event: ChangeEvent) -> EventRow:
    """The flat form of an event (storage.rows.event_from_tuple goes the other way)."""
    items = event.items
    return EventRow(
        event.origin, event.seq, event.resident_code, event.previous_code, int(event.reason),
        event.effective_date.isoformat(), to_us(event.recorded_at), items.name, items.alias,
        items.birth_date.isoformat(), int(items.sex), items.address,
    )  # fmt: skip


# A registration as flat stored values, in storage.rows.REGISTRATION_COLUMNS order: resident_code,
# municipality, active, reason, effective_date, recorded_us, seq, replaced_by, name, alias, birth_date,
# sex, address (see EventRow for the value forms).
RegistrationRow = tuple[str, str, bool, int, str, int, int, str, str, str, str, int, str]


@dataclass(frozen=True, slots=True)
class Registration:
    """What one municipality last said about one resident code: the state the relay materializes.

    `replaced_by` is set on the old code's row after a 住民票コード変更."""

    resident_code: str
    municipality: str
    items: IdentityItems
    active: bool
    reason: ChangeReason
    effective_date: dt.date
    recorded_at: dt.datetime
    seq: int
    replaced_by: str = ""

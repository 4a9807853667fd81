"""State rules of the relay: how events become registrations, and registrations a current record.

A tier keeps, per (resident code, municipality), what that municipality last said (a Registration).
Each origin's events are applied in seq order, so every Registration is a function of its origin's
event prefix; the current record is a pure function of the set of Registrations. Together this makes
the final state the same for every interleaving of events from different origins (転出 at A and
転入 at B may arrive in either order).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from jukinet.domain.model import (
    DELETE_REASONS,
    ChangeEvent,
    ChangeReason,
    Effect,
    EventRow,
    Registration,
    RegistrationRow,
    effect_of,
)


def registrations_from(event: ChangeEvent) -> list[Registration]:
    """The registration rows one event writes (two for a code change: the retired and the new code)."""
    effect = effect_of(event.reason)
    current = Registration(
        resident_code=event.resident_code,
        municipality=event.origin,
        items=event.items,
        active=effect is not Effect.DELETE,
        reason=event.reason,
        effective_date=event.effective_date,
        recorded_at=event.recorded_at,
        seq=event.seq,
    )
    if event.reason is not ChangeReason.CODE_CHANGE:
        return [current]
    retired = Registration(
        resident_code=event.previous_code,
        municipality=event.origin,
        items=event.items,
        active=False,
        reason=event.reason,
        effective_date=event.effective_date,
        recorded_at=event.recorded_at,
        seq=event.seq,
        replaced_by=event.resident_code,
    )
    return [retired, current]


_DELETING = frozenset(int(reason) for reason in DELETE_REASONS)
_CODE_CHANGE = int(ChangeReason.CODE_CHANGE)


def registration_rows_from(row: EventRow) -> list[RegistrationRow]:
    """registrations_from for the flat form (the relay's receiving hot path); the unit tests hold the
    two to the same result for every reason."""
    origin, seq, code, previous, reason, effective, recorded_us, name, alias, birth, sex, address = row
    active = reason not in _DELETING
    current = (code, origin, active, reason, effective, recorded_us, seq, "", name, alias, birth, sex, address)
    if reason != _CODE_CHANGE:
        return [current]
    retired = (previous, origin, False, reason, effective, recorded_us, seq, code, name, alias, birth, sex, address)
    return [retired, current]


def latest_registration_rows(rows: Iterable[EventRow]) -> list[RegistrationRow]:
    """The registration rows a run of events leaves behind (last write per key wins, in seq order)."""
    latest: dict[tuple[str, str], RegistrationRow] = {}
    for row in rows:
        for reg in registration_rows_from(row):
            latest[(reg[0], reg[1])] = reg
    return list(latest.values())


class Status(Enum):
    ACTIVE = "active"  # registered at `holder`
    DELETED = "deleted"  # no municipality holds the resident (moved away with no move-in yet, died, …)
    RETIRED = "retired"  # the code was replaced by `replaced_by`


# Members bound once: reading Status.X goes through the enum's class-attribute machinery on every use,
# which shows on the agency hot path (one current record per answer).
ACTIVE, DELETED, RETIRED = Status.ACTIVE, Status.DELETED, Status.RETIRED


@dataclass(frozen=True, slots=True)
class CurrentRecord:
    resident_code: str
    status: Status
    holder: str
    registration: Registration

    @property
    def replaced_by(self) -> str:
        return self.registration.replaced_by


_TERMINAL = frozenset({ChangeReason.DEATH, ChangeReason.EMIGRATION, ChangeReason.EX_OFFICIO_DELETION})


def _finality(reg: Registration) -> int:
    """On the same effective date a retired code outranks a terminal deletion, which outranks a move-out:
    the move-out at A processed after B's move-in notice must not hide B's code change or death."""
    if reg.replaced_by:
        return 3
    if reg.reason in _TERMINAL:
        return 2
    return 1 if not reg.active else 0


def _recency(reg: Registration) -> tuple[object, ...]:
    return (reg.effective_date, _finality(reg), reg.recorded_at, reg.municipality)


def current_record(registrations: Iterable[Registration]) -> CurrentRecord | None:
    """The resident's current record: the most recent active registration if any holds it,
    otherwise the most recent inactive one (deleted or retired). Ties are broken by recorded
    time, then municipality code, so the answer never depends on arrival order."""
    regs = list(registrations)
    if not regs:
        return None
    if len(regs) == 1:  # most residents: one municipality has ever reported them
        only = regs[0]
        status = ACTIVE if only.active else RETIRED if only.replaced_by else DELETED
        return CurrentRecord(only.resident_code, status, only.municipality, only)
    active = [r for r in regs if r.active]
    if active:
        chosen = max(active, key=_recency)
        return CurrentRecord(chosen.resident_code, ACTIVE, chosen.municipality, chosen)
    chosen = max(regs, key=_recency)
    status = RETIRED if chosen.replaced_by else DELETED
    return CurrentRecord(chosen.resident_code, status, chosen.municipality, chosen)

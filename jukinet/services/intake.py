"""Municipality intake: turn changes from the register system into numbered events, one transaction."""

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from jukinet.domain.errors import AlreadyRegistered, CodePoolExhausted, JukinetError, NotRegistered, RequestIdReused
from jukinet.domain.model import (
    ASSIGNING_REASONS,
    ChangeEvent,
    ChangeReason,
    Effect,
    EventRow,
    IdentityItems,
    RegisterChange,
    Registration,
    effect_of,
    event_row,
)
from jukinet.domain.registry_state import latest_registration_rows, registrations_from
from jukinet.services.ports import AccessEntry, IntakeTx
from jukinet.services.relay import CallInfo


@dataclass(frozen=True, slots=True)
class Accepted:
    request_id: str
    resident_code: str
    seq: int


@dataclass(frozen=True, slots=True)
class Refused:
    request_id: str
    error: JukinetError


Outcome = Accepted | Refused


@dataclass(frozen=True, slots=True)
class IntakeResult:
    outcomes: list[Outcome]  # one per change, in order
    events: list[EventRow]  # the events recorded (committed with the caller's transaction)


def _repeats(change: RegisterChange, earlier: ChangeEvent) -> bool:
    """Whether `change` is the change recorded as `earlier` (a retry), not another one under its request id."""
    if change.reason is not earlier.reason or change.effective_date != earlier.effective_date:
        return False
    if change.reason is ChangeReason.CODE_CHANGE:
        code_matches = change.resident_code == earlier.previous_code
    else:  # a code the register named must be the event's; a birth without one got a fresh code
        code_matches = change.resident_code is None or change.resident_code == earlier.resident_code
    return code_matches and (change.items is None or change.items == earlier.items)


def _needs_new_code(change: RegisterChange) -> bool:
    if change.reason is ChangeReason.CODE_CHANGE:
        return True
    return change.reason in ASSIGNING_REASONS and change.resident_code is None


def record_changes(
    tx: IntakeTx,
    origin: str,
    changes: Sequence[RegisterChange | Refused],
    call: CallInfo,
    now: dt.datetime,
) -> IntakeResult:
    """Records each valid change as the next event of `origin`; refuses the others one by one.

    `changes` may already contain Refused items (bad at the edge): they are logged and answered in
    place, and never disturb their neighbours. A request_id seen before returns its first answer."""
    valid = [c for c in changes if isinstance(c, RegisterChange)]
    seen = tx.events_by_request_id(c.request_id for c in valid)
    codes = {c.resident_code for c in valid if c.resident_code}
    current: dict[str, Registration] = tx.registrations_at(codes, origin)
    free = tx.peek_free_codes(sum(1 for c in valid if _needs_new_code(c)))
    used_codes: list[str] = []
    seq = tx.head_seq(origin)
    events: list[ChangeEvent] = []
    request_ids: list[str] = []
    outcomes: list[Outcome] = []
    in_batch: dict[str, ChangeEvent] = {}  # by request id: a repeat within the message
    access: list[AccessEntry] = []
    subjects: list[str] = []

    for change in changes:
        if isinstance(change, Refused):
            outcomes.append(change)
            access.append(_access(call, now, change.request_id, [], change.error.code))
            continue
        earlier = seen.get(change.request_id) or in_batch.get(change.request_id)
        if earlier is not None:  # a retry: the first answer again, if it is the same change
            if _repeats(change, earlier):
                outcomes.append(Accepted(change.request_id, earlier.resident_code, earlier.seq))
            else:
                error = RequestIdReused(
                    f"request_id {change.request_id!r} was already used for another change ({earlier.reason.name} "
                    f"of {earlier.resident_code}, seq {earlier.seq}); send a new change under a new request_id"
                )
                outcomes.append(Refused(change.request_id, error))
                access.append(_access(call, now, change.request_id, _subjects(change), error.code))
            continue
        try:
            event = _event_for(change, origin, seq + 1, current, free, used_codes, now)
        except JukinetError as error:
            outcomes.append(Refused(change.request_id, error))
            access.append(_access(call, now, change.request_id, _subjects(change), error.code))
            continue
        seq += 1
        events.append(event)
        request_ids.append(change.request_id)
        if event.resident_code in codes or event.previous_code in codes:  # a later change may name it
            for reg in registrations_from(event):
                current[reg.resident_code] = reg
        in_batch[change.request_id] = event
        outcomes.append(Accepted(change.request_id, event.resident_code, event.seq))
        subjects.extend(_subjects(change, event))

    if subjects:
        # One entry for the accepted changes of this message (it is one request), one per refusal.
        access.append(_access(call, now, call.request_id, subjects, "OK"))
    flat = [event_row(e) for e in events]
    if flat:
        tx.insert_event_rows(flat, request_ids)
        tx.upsert_registration_rows(latest_registration_rows(flat))
    if used_codes:
        tx.remove_free_codes(used_codes)
    tx.append_access(access)
    return IntakeResult(outcomes, flat)


def _event_for(
    change: RegisterChange,
    origin: str,
    seq: int,
    current: dict[str, Registration],
    free: list[str],
    used_codes: list[str],
    now: dt.datetime,
) -> ChangeEvent:
    effect = effect_of(change.reason)
    existing = current.get(change.resident_code) if change.resident_code else None
    held = existing is not None and existing.active
    if existing is not None and existing.replaced_by:
        raise AlreadyRegistered(
            f"resident code {change.resident_code} was retired (replaced by another code) and cannot be used again"
        )
    if effect is Effect.CREATE and held:
        raise AlreadyRegistered(
            f"resident {change.resident_code} is already registered here; send a correction instead"
        )
    if effect is not Effect.CREATE and not held:
        raise NotRegistered(
            f"resident {change.resident_code} is not registered at {origin}; check the code "
            "(a moved-out, deceased or retired code cannot be changed)"
        )
    items: IdentityItems | None = change.items
    if items is None:
        assert existing is not None  # noqa: S101 - guaranteed: only deletions and code changes omit items
        items = existing.items
    code = change.resident_code or ""
    previous = ""
    if _needs_new_code(change):
        if len(used_codes) >= len(free):
            raise CodePoolExhausted(
                "no free 住民票コード left in this municipality's pool; a refill was requested, retry shortly"
            )
        previous = code if change.reason is ChangeReason.CODE_CHANGE else ""
        code = free[len(used_codes)]
        used_codes.append(code)
    return ChangeEvent(
        origin=origin,
        seq=seq,
        resident_code=code,
        previous_code=previous,
        reason=change.reason,
        effective_date=change.effective_date,
        recorded_at=now,
        items=items,
    )


def _subjects(change: RegisterChange, event: ChangeEvent | None = None) -> list[str]:
    codes = [c for c in (change.resident_code, event.resident_code if event else None) if c]
    return list(dict.fromkeys(codes))


def _access(call: CallInfo, now: dt.datetime, request_id: str, subjects: Sequence[str], outcome: str) -> AccessEntry:
    return AccessEntry(
        at=now,
        request_id=request_id or call.request_id,
        peer=call.peer,
        method=call.method,
        outcome=outcome,
        subjects=tuple(subjects),
    )

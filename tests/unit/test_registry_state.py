"""The relay's state rules give the same final state for every arrival order across origins."""

import dataclasses
import datetime as dt
import itertools

from jukinet.domain.model import ChangeEvent, ChangeReason, IdentityItems, Registration, Sex
from jukinet.domain.registry_state import Status, current_record, registrations_from

T0 = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)
ALICE, BOB, CAROL = "12345678903", "98765432109", "11111111113"


def _items(address: str, name: str = "山田\u3000花子") -> IdentityItems:
    return IdentityItems(name=name, birth_date=dt.date(1980, 1, 1), sex=Sex.FEMALE, address=address)


def _event(
    origin: str, seq: int, code: str, reason: ChangeReason, day: int, address: str, previous: str = ""
) -> ChangeEvent:
    return ChangeEvent(
        origin=origin,
        seq=seq,
        resident_code=code,
        previous_code=previous,
        reason=reason,
        effective_date=dt.date(2026, 11, day),
        recorded_at=T0 + dt.timedelta(days=day, seconds=seq),
        items=_items(address),
    )


# Origin A (調布市): Alice and Bob registered, Alice moves out, Bob changes his code.
A = [
    _event("132080", 1, ALICE, ChangeReason.EX_OFFICIO_RECORD, 1, "調布市1"),
    _event("132080", 2, BOB, ChangeReason.EX_OFFICIO_RECORD, 1, "調布市2"),
    _event("132080", 3, ALICE, ChangeReason.MOVE_OUT, 5, "調布市1"),
    _event("132080", 4, "22222222226", ChangeReason.CODE_CHANGE, 6, "調布市2", previous=BOB),
]
# Origin B (北見市): Alice moves in (another prefecture), Carol is born then dies.
B = [
    _event("012084", 1, ALICE, ChangeReason.MOVE_IN, 5, "北見市1"),
    _event("012084", 2, CAROL, ChangeReason.BIRTH, 3, "北見市9"),
    _event("012084", 3, CAROL, ChangeReason.DEATH, 7, "北見市9"),
]
# Origin C (福生市): Alice moves on from B later, Bob's old code never appears again.
C = [_event("132187", 1, ALICE, ChangeReason.MOVE_IN, 9, "福生市1")]
B_MOVE_OUT = _event("012084", 4, ALICE, ChangeReason.MOVE_OUT, 9, "北見市1")


def _apply(order: list[ChangeEvent]) -> dict[str, tuple[object, ...]]:
    state: dict[tuple[str, str], Registration] = {}
    for event in order:
        for reg in registrations_from(event):
            state[(reg.resident_code, reg.municipality)] = reg
    by_code: dict[str, list[Registration]] = {}
    for (code, _), reg in state.items():
        by_code.setdefault(code, []).append(reg)
    final: dict[str, tuple[object, ...]] = {}
    for code, regs in by_code.items():
        record = current_record(regs)
        assert record is not None
        final[code] = (record.status, record.holder, record.registration.items.address, record.replaced_by)
    return final


def _interleavings(*streams: list[ChangeEvent]) -> list[list[ChangeEvent]]:
    """Every merge of the streams that keeps each stream's own order."""
    total = sum(len(s) for s in streams)
    slots = [i for i, s in enumerate(streams) for _ in s]
    orders = []
    for arrangement in set(itertools.permutations(slots, total)):
        cursors = [0] * len(streams)
        order = []
        for which in arrangement:
            order.append(streams[which][cursors[which]])
            cursors[which] += 1
        orders.append(order)
    return orders


def test_every_interleaving_of_three_origins_gives_the_same_final_state() -> None:
    orders = _interleavings(A, [*B, B_MOVE_OUT], C)
    assert len(orders) == 630  # 9! / (4! 4! 1!)
    results = {tuple(sorted(_apply(order).items())) for order in orders}
    assert len(results) == 1
    final = dict(next(iter(results)))
    assert final[ALICE] == (Status.ACTIVE, "132187", "福生市1", "")
    assert final[BOB] == (Status.RETIRED, "132080", "調布市2", "22222222226")
    assert final["22222222226"][0:2] == (Status.ACTIVE, "132080")
    assert final[CAROL][0:2] == (Status.DELETED, "012084")


def test_move_in_before_move_out_still_ends_at_the_new_municipality() -> None:
    move_in_first = _apply([A[0], B[0], A[2]])
    move_out_first = _apply([A[0], A[2], B[0]])
    assert move_in_first == move_out_first
    assert move_in_first[ALICE][0:2] == (Status.ACTIVE, "012084")


def test_a_moved_out_resident_without_move_in_is_deleted() -> None:
    final = _apply([A[0], A[2]])
    assert final[ALICE][0:2] == (Status.DELETED, "132080")


def test_a_same_day_move_out_does_not_hide_a_code_change_at_the_new_municipality() -> None:
    """B changes X to Y on the move-in day; A records X's move-out later that day."""
    x, y = ALICE, "33333333333"
    move_in = _event("012084", 1, x, ChangeReason.MOVE_IN, 5, "北見市1")
    change = _event("012084", 2, y, ChangeReason.CODE_CHANGE, 5, "北見市1", previous=x)
    registered = _event("132080", 1, x, ChangeReason.EX_OFFICIO_RECORD, 1, "調布市1")
    move_out = _event("132080", 2, x, ChangeReason.MOVE_OUT, 5, "調布市1")
    move_out = dataclasses.replace(move_out, recorded_at=change.recorded_at + dt.timedelta(hours=3))
    for order in ([registered, move_in, change, move_out], [move_in, change, registered, move_out]):
        final = _apply(order)
        assert final[x][0] is Status.RETIRED
        assert final[x][3] == y
        assert final[y][0:2] == (Status.ACTIVE, "012084")


def test_a_same_day_death_outranks_the_move_out() -> None:
    registered = _event("132080", 1, ALICE, ChangeReason.EX_OFFICIO_RECORD, 1, "調布市1")
    move_in = _event("012084", 1, ALICE, ChangeReason.MOVE_IN, 5, "北見市1")
    death = _event("012084", 2, ALICE, ChangeReason.DEATH, 5, "北見市1")
    move_out = _event("132080", 2, ALICE, ChangeReason.MOVE_OUT, 5, "調布市1")
    move_out = dataclasses.replace(move_out, recorded_at=death.recorded_at + dt.timedelta(hours=3))
    final = _apply([registered, move_in, death, move_out])
    assert final[ALICE][0:2] == (Status.DELETED, "012084")

"""whole_histories: every event under every code a resident has had, whichever code is asked for."""

import datetime as dt
from collections.abc import Iterable
from itertools import pairwise

import pytest

from jukinet.domain.errors import InconsistentRecords, NotFoundError
from jukinet.domain.model import ChangeEvent, ChangeReason, IdentityItems, Registration, Sex
from jukinet.services.history import current_by_code, whole_histories, whole_history

ITEMS = IdentityItems("山田\u3000太郎", dt.date(1980, 4, 1), Sex.MALE, "東京都調布市小島町1番")


def _event(seq: int, code: str, reason: ChangeReason = ChangeReason.BIRTH, previous: str = "") -> ChangeEvent:
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=seq)
    return ChangeEvent("132080", seq, code, reason, at.date(), at, ITEMS, previous)


class Events:
    """An in-memory event table; counts the queries it answers."""

    def __init__(self, events: list[ChangeEvent]) -> None:
        self.events = events
        self.queries: list[list[str]] = []

    def events_of(self, codes: Iterable[str]) -> list[ChangeEvent]:
        wanted = list(codes)
        self.queries.append(wanted)
        return [e for e in self.events if e.resident_code in wanted]


# A → B → C by two code changes; D is someone else.
A_BIRTH = _event(1, "A")
A_MOVE = _event(2, "A", ChangeReason.INTRA_MOVE)
B_CHANGE = _event(3, "B", ChangeReason.CODE_CHANGE, previous="A")
C_CHANGE = _event(4, "C", ChangeReason.CODE_CHANGE, previous="B")
D_BIRTH = _event(5, "D")
TABLE = [C_CHANGE, D_BIRTH, A_MOVE, B_CHANGE, A_BIRTH]


def test_every_code_of_the_chain_gives_the_same_whole_history_oldest_first() -> None:
    whole = [A_BIRTH, A_MOVE, B_CHANGE, C_CHANGE]
    assert whole_history(Events(TABLE), ["A", "B", "C"]) == whole  # asked by the first code
    assert whole_history(Events(TABLE), ["B", "C"]) == whole
    assert whole_history(Events(TABLE), ["C"]) == whole  # asked by the current code


def test_many_residents_share_each_step_back() -> None:
    events = Events(TABLE)
    assert whole_histories(events, [["C"], ["D"], ["B", "C"]]) == [
        [A_BIRTH, A_MOVE, B_CHANGE, C_CHANGE],
        [D_BIRTH],
        [A_BIRTH, A_MOVE, B_CHANGE, C_CHANGE],
    ]
    assert events.queries == [["B", "C", "D"], ["A"]]  # one query per step back, for all of them


def test_a_resident_without_events_has_an_empty_history() -> None:
    assert whole_histories(Events(TABLE), [["Z"], []]) == [[], []]


class Registrations:
    """An in-memory registration table: `links` maps each retired code to the code that replaced it."""

    def __init__(self, links: dict[str, str], active: set[str]) -> None:
        self.rows = {
            code: Registration(code, "132080", ITEMS, code in active, ChangeReason.BIRTH, dt.date(2026, 1, 1),
                               dt.datetime(2026, 1, 1, tzinfo=dt.UTC), 1, links.get(code, ""))
            for code in {*links, *links.values(), *active}
        }  # fmt: skip

    def registrations_of(self, codes: Iterable[str]) -> dict[str, list[Registration]]:
        return {c: [self.rows[c]] for c in codes if c in self.rows}


def test_a_long_chain_of_codes_is_followed_to_its_end_and_walked_back_whole() -> None:
    """Far more code changes than any resident makes (the walks once stopped silently after 32 steps)."""
    codes = [f"K{i:03d}" for i in range(60)]
    record, chain = current_by_code(Registrations(dict(pairwise(codes)), {codes[-1]}), codes[0])
    assert record.resident_code == codes[-1]
    assert chain == codes
    events = [_event(1, codes[0])] + [
        _event(i + 1, code, ChangeReason.CODE_CHANGE, previous=before)
        for i, (before, code) in enumerate(pairwise(codes), start=1)
    ]
    assert whole_history(Events(events), [codes[-1]]) == events


def test_a_loop_of_codes_is_refused_as_inconsistent_and_a_dead_end_is_not_found() -> None:
    with pytest.raises(InconsistentRecords, match="A -> B -> C -> A"):
        current_by_code(Registrations({"A": "B", "B": "C", "C": "A"}, set()), "A")
    unrecorded = Registrations({"A": "B"}, set())
    del unrecorded.rows["B"]
    with pytest.raises(NotFoundError):
        current_by_code(unrecorded, "A")  # replaced by a code the center holds nothing under
    looped = [_event(1, "A", ChangeReason.CODE_CHANGE, previous="B"), _event(2, "B", ChangeReason.CODE_CHANGE, "A")]
    assert whole_history(Events(looped), ["A"]) == looped  # the walk back ends on a loop too

"""A resident's whole change history, under every 住民票コード they have had.

A code change is recorded under the new code, its previous_code naming the retired one; the retired
code's registration names the new one (replaced_by). Callers resolve the forward chain (the code asked
for, then each code that replaced it); this adds the codes before, so the history an agency or a
resident receives is the same whichever of the person's codes was asked for.
"""

from collections.abc import Iterable, Sequence
from typing import Protocol

from jukinet.domain.model import ChangeEvent, ChangeReason

MAX_CODE_CHANGES = 32  # a resident's chain of codes is short; bound every walk anyway


class EventsTx(Protocol):
    def events_of(self, codes: Iterable[str]) -> list[ChangeEvent]:
        """Events recorded under any of the codes."""
        ...


def whole_histories(tx: EventsTx, chains: Sequence[Sequence[str]]) -> list[list[ChangeEvent]]:
    """For each resident, given by the forward chain of its codes, every event under every code it has
    had, oldest first. One query per step back in time for all residents together (bulk lookups)."""
    codes_of = [set(chain) for chain in chains]
    by_code: dict[str, list[ChangeEvent]] = {}
    fetched: set[str] = set()
    for _ in range(MAX_CODE_CHANGES + 1):
        wanted = set().union(*codes_of) - fetched
        if not wanted:
            break
        for event in tx.events_of(sorted(wanted)):
            by_code.setdefault(event.resident_code, []).append(event)
        fetched |= wanted
        for codes in codes_of:
            codes |= {
                e.previous_code
                for code in list(codes)
                for e in by_code.get(code, ())
                if e.reason is ChangeReason.CODE_CHANGE and e.previous_code
            }
    return [sorted((e for c in codes for e in by_code.get(c, ())), key=_order) for codes in codes_of]


def whole_history(tx: EventsTx, chain: Sequence[str]) -> list[ChangeEvent]:
    return whole_histories(tx, [chain])[0]


def _order(event: ChangeEvent) -> tuple[object, ...]:
    return (event.recorded_at, event.origin, event.seq)

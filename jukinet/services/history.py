"""A resident's whole change history, under every 住民票コード they have had.

A code change is recorded under the new code, its previous_code naming the retired one; the retired
code's registration names the new one (replaced_by). Callers resolve the forward chain (the code asked
for, then each code that replaced it); this adds the codes before, so the history an agency or a
resident receives is the same whichever of the person's codes was asked for.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from jukinet.domain.errors import InconsistentRecords, NotFoundError
from jukinet.domain.model import ChangeEvent, ChangeReason, Registration
from jukinet.domain.registry_state import RETIRED, CurrentRecord, current_record


class EventsTx(Protocol):
    def events_of(self, codes: Iterable[str]) -> list[ChangeEvent]:
        """Events recorded under any of the codes."""
        ...


class RegistrationsTx(Protocol):
    def registrations_of(self, codes: Iterable[str]) -> dict[str, list[Registration]]:
        """Every municipality's registration of each code."""
        ...


def current_by_code(
    tx: RegistrationsTx, code: str, known: Mapping[str, list[Registration]] | None = None
) -> tuple[CurrentRecord, list[str]]:
    """The current record of the resident `code` names, following each retired code to the one that replaced
    it, and the codes walked (the forward chain). `known`: registrations already read for a batch of codes,
    `code` among them. No step limit: a chain that comes back to a code it passed is InconsistentRecords
    (refused loudly, never cut short); nothing recorded, or a chain ending at a retired code, is NotFound."""
    chain = [code]
    registrations = known.get(code, []) if known is not None else tx.registrations_of([code]).get(code, [])
    record = current_record(registrations)
    while record is not None and record.status is RETIRED:
        successor = record.replaced_by
        if successor in chain:
            raise InconsistentRecords(
                f"the codes of resident {code} replace each other in a loop ({' -> '.join([*chain, successor])}); "
                "the center's records are inconsistent: report this request id to the center's operator"
            )
        chain.append(successor)
        record = current_record(tx.registrations_of([successor]).get(successor, []))
    if record is None:
        raise NotFoundError(f"no resident is recorded under 住民票コード {code}")
    return record, chain


def whole_histories(tx: EventsTx, chains: Sequence[Sequence[str]]) -> list[list[ChangeEvent]]:
    """For each resident, given by the forward chain of its codes, every event under every code it has
    had, oldest first. One query per step back in time for all residents together (bulk lookups).

    No step limit, so no history is ever cut short: every step reads only codes not read before, and the
    codes come from stored events, so the walk ends (a loop of codes included)."""
    codes_of = [set(chain) for chain in chains]
    by_code: dict[str, list[ChangeEvent]] = {}
    fetched: set[str] = set()
    while wanted := set().union(*codes_of) - fetched:
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

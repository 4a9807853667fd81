"""Provision to agencies: lookups by code (one or in bulk), restricted search and the change feed.

Every record provided is one provision entry written in the same transaction as the access-log entry,
before the answer leaves the center. Only the purpose's fields are provided."""

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from jukinet.domain.agency import Agency, Purpose
from jukinet.domain.errors import InconsistentRecords, InvalidField, JukinetError, NotFoundError, SearchTooBroad
from jukinet.domain.model import ChangeEvent, Effect, Registration, RegistrationRow, effect_of
from jukinet.domain.normalize import search_key
from jukinet.domain.registry_state import CurrentRecord, Status, current_record
from jukinet.services.history import current_by_code, whole_histories, whole_history
from jukinet.services.ports import AccessEntry, ProvisionEntry
from jukinet.services.relay import CallInfo

MAX_SEARCH_RESULTS = 10  # more matches than this: ask for more keys, never a truncated list
ALLOWED_KEY_SETS = "name + birth_date + sex, or name + address"


class ProvisionTx(Protocol):
    """The center's transaction for provision to agencies."""

    def registrations_of(self, codes: Iterable[str]) -> dict[str, list[Registration]]: ...

    def registration_rows_of(self, codes: Iterable[str]) -> dict[str, list[RegistrationRow]]:
        """The same registrations as stored rows (RegistrationRow order), without domain objects."""
        ...

    def events_of(self, codes: Iterable[str]) -> list[ChangeEvent]:
        """Events recorded under any of the codes, oldest first."""
        ...

    def append_provisions(self, entries: Sequence[ProvisionEntry]) -> None: ...

    def append_provisions_for(self, template: ProvisionEntry, codes: Sequence[str]) -> None:
        """One provision per code, each as `template` (instant, request, agency, purpose, fields, channel)
        but for that resident: a bulk message's entries differ in the code only."""
        ...

    def append_access(self, entries: Sequence[AccessEntry]) -> None: ...

    def codes_matching(
        self, *, name_key: str, birth_date: str = "", sex: int = 0, address_key: str = "", limit: int
    ) -> list[str]: ...


class FeedTx(ProvisionTx, Protocol):
    def feed_start(self, agency: str, purpose: str, now_us: int) -> int: ...

    def feed_subscription_start(self, agency: str, purpose: str) -> int | None: ...

    def feed_head(self, agency: str, purpose: str) -> tuple[int, int]: ...

    def feed_items(self, agency: str, purpose: str, after_seq: int, limit: int) -> list[tuple[int, ChangeEvent]]: ...

    def events_after_id(self, event_id: int, limit: int) -> list[tuple[int, ChangeEvent]]: ...

    def add_feed_items(self, agency: str, purpose: str, items: Sequence[tuple[int, int]]) -> None: ...


@dataclass(frozen=True, slots=True)
class Provided:
    record: CurrentRecord
    fields: frozenset[str]
    history: list[ChangeEvent]


@dataclass(frozen=True, slots=True)
class BulkItem:
    """One bulk result: a record provided, an error, or (the common case, see bulk_lookup) `row`: the code's
    only registration, active, as stored; that row is the current record, with no history to add."""

    requested: str
    provided: Provided | None
    error: JukinetError | None
    row: RegistrationRow | None = None


# A lookup's answer: a record provided, or (the common case, see look_up) the code's only registration,
# active, as stored: the current record, with no history to add.
Looked: TypeAlias = Provided | RegistrationRow


@dataclass(frozen=True, slots=True)
class FeedDelivery:
    seq: int
    event: ChangeEvent


@dataclass(frozen=True, slots=True)
class SearchKeys:
    name: str
    birth_date: str = ""
    sex: int = 0
    address: str = ""


@dataclass(frozen=True, slots=True)
class LookupRequest:
    """One agency call asking for one resident by code."""

    agency: Agency
    purpose: Purpose
    code: str
    call: CallInfo
    now: dt.datetime


def look_up(tx: ProvisionTx, requests: Sequence[LookupRequest]) -> list[Looked | JukinetError]:
    """The records for many callers' lookups (concurrent calls share one transaction), read only: one result
    per request, in order. A code that is not found (or whose records are inconsistent) is that request's
    error. The writer logs them all with log_lookups before the commit that precedes any answer.

    As in bulk_lookup, a code whose only registration is active is answered with that stored row when the
    purpose has no history (the common case); only the others are read as domain objects."""
    with_history = {r.code for r in requests if "history" in r.purpose.fields}
    plain = {r.code for r in requests} - with_history  # a code also asked with history takes the domain path
    rows = tx.registration_rows_of(plain) if plain else {}
    shortcut = {c: row for c, found in rows.items() if (row := _single_active(found)) is not None}
    # Domain objects for the codes with history and those the shortcut cannot take (a plain code without rows
    # is unknown: nothing to read).
    others = with_history | (rows.keys() - shortcut.keys())
    regs = tx.registrations_of(others) if others else {}
    results: list[Looked | JukinetError] = []
    for r in requests:
        row = shortcut.get(r.code)
        if row is not None:
            results.append(row)
            continue
        try:
            record, chain = current_by_code(tx, r.code, regs)
        except (NotFoundError, InconsistentRecords) as error:
            results.append(error)
            continue
        history = whole_history(tx, chain) if "history" in r.purpose.fields else []
        results.append(Provided(record, r.purpose.fields, history))
    return results


def log_lookups(tx: ProvisionTx, requests: Sequence[LookupRequest], results: Sequence[Looked | Exception]) -> None:
    """Each record provided is one provision entry and one access entry of its own call, written before any
    answer leaves; a refused lookup writes nothing here (the guard logs the refusal)."""
    provisions: list[ProvisionEntry] = []
    accesses: list[AccessEntry] = []
    for r, result in zip(requests, results, strict=True):
        if isinstance(result, Exception):
            continue
        code = result.record.resident_code if isinstance(result, Provided) else r.code  # a row is r.code's own
        provisions.append(_provision(r.now, r.call, r.agency, r.purpose, code, "lookup"))
        accesses.append(_access(r.call, r.now, r.purpose, [r.code, code], "OK"))
    tx.append_provisions(provisions)
    tx.append_access(accesses)


def bulk_lookup(
    tx: ProvisionTx,
    *,
    agency: Agency,
    purpose: Purpose,
    codes: Sequence[str | InvalidField],
    call: CallInfo,
    now: dt.datetime,
) -> list[BulkItem]:
    """Many codes (already checked at the edge: bad ones arrive as InvalidField); one result per code.

    For a purpose without history, a code whose only registration ever recorded is active is answered from
    that stored row as it is (BulkItem.row): it is the current record, by current_record's first rule. Only
    the other codes (moved, deleted, retired, unknown) go through domain objects and current_by_code. Most
    residents have one registration, and building the objects was most of a bulk item's cost."""
    valid = [c for c in codes if isinstance(c, str)]
    fields = purpose.fields
    rows: dict[str, list[RegistrationRow]] = {}
    if "history" in fields:
        regs = tx.registrations_of(valid)
    else:
        rows = tx.registration_rows_of(valid)
        # Domain objects only for codes with rows the shortcut cannot take (unknown codes have none to read).
        regs = tx.registrations_of([c for c, found in rows.items() if _single_active(found) is None])
    results: list[BulkItem] = []
    provided: list[str] = []  # the current code of each record provided
    chains: list[tuple[int, list[str]]] = []  # (index in results, codes walked) of each provided record
    for code in codes:
        if isinstance(code, InvalidField):
            results.append(BulkItem("", None, code))
            continue
        row = _single_active(rows.get(code))
        if row is not None:
            results.append(BulkItem(code, None, None, row))
            provided.append(code)
            continue
        try:
            record, chain = current_by_code(tx, code, regs)
        except (NotFoundError, InconsistentRecords) as error:
            results.append(BulkItem(code, None, error))
            continue
        chains.append((len(results), chain))
        results.append(BulkItem(code, Provided(record, fields, []), None))
        provided.append(record.resident_code)
    if "history" in fields and chains:
        for (index, _), events in zip(chains, whole_histories(tx, [chain for _, chain in chains]), strict=True):
            item = results[index]
            assert item.provided is not None  # noqa: S101 - set above for every entry of `chains`
            results[index] = BulkItem(item.requested, Provided(item.provided.record, fields, events), None)
    tx.append_provisions_for(_provision(now, call, agency, purpose, "", "bulk"), provided)
    tx.append_access([_access(call, now, purpose, [*valid, *provided], "OK")])
    return results


def _single_active(rows: list[RegistrationRow] | None) -> RegistrationRow | None:
    """The row, if it is the code's only registration and active (position 2 of RegistrationRow)."""
    if rows is not None and len(rows) == 1 and rows[0][2]:
        return rows[0]
    return None


def parse_search(name: str, birth_date: str, sex: int, address: str) -> SearchKeys:
    """Only the allowed key sets, exactly: name + birth_date + sex, or name + address."""
    given = {k for k, v in (("name", name), ("birth_date", birth_date), ("sex", sex), ("address", address)) if v}
    if given == {"name", "birth_date", "sex"}:
        return SearchKeys(name=name, birth_date=birth_date, sex=sex)
    if given == {"name", "address"}:
        return SearchKeys(name=name, address=address)
    keys = " + ".join(sorted(given)) or "no keys"
    raise InvalidField("keys", f"{keys} is not an allowed key set; use {ALLOWED_KEY_SETS}")


def search(
    tx: ProvisionTx, *, agency: Agency, purpose: Purpose, keys: SearchKeys, call: CallInfo, now: dt.datetime
) -> list[Provided]:
    """Exact match on normalized keys against current records; SearchTooBroad above the cap."""
    name_key = search_key(keys.name)
    address_key = search_key(keys.address) if keys.address else ""
    candidates = tx.codes_matching(
        name_key=name_key,
        birth_date=keys.birth_date,
        sex=keys.sex,
        address_key=address_key,
        limit=20 * MAX_SEARCH_RESULTS,
    )
    regs = tx.registrations_of(candidates)
    matches: dict[str, CurrentRecord] = {}
    for code in candidates:
        record = current_record(regs.get(code, []))
        if record is None or record.status is Status.RETIRED:
            continue
        items = record.registration.items
        same_name = search_key(items.name) == name_key
        if keys.address:
            hit = same_name and search_key(items.address) == address_key
        else:
            hit = same_name and items.birth_date.isoformat() == keys.birth_date and int(items.sex) == keys.sex
        if hit:
            matches[record.resident_code] = record
    if len(matches) > MAX_SEARCH_RESULTS or len(candidates) >= 20 * MAX_SEARCH_RESULTS:
        raise SearchTooBroad(
            f"more than {MAX_SEARCH_RESULTS} residents match; add keys or use the 住民票コード "
            f"(allowed key sets: {ALLOWED_KEY_SETS})"
        )
    found = sorted(matches.values(), key=lambda r: r.resident_code)
    histories = (
        whole_histories(tx, [[r.resident_code] for r in found]) if "history" in purpose.fields else [[]] * len(found)
    )
    provided = [Provided(r, purpose.fields, history) for r, history in zip(found, histories, strict=True)]
    tx.append_provisions([_provision(now, call, agency, purpose, r.resident_code, "search") for r in found])
    tx.append_access([_access(call, now, purpose, [r.resident_code for r in found], "OK")])
    return provided


def next_feed_items(
    tx: FeedTx, *, agency: Agency, purpose: Purpose, after_seq: int, limit: int, call: CallInfo, now: dt.datetime
) -> list[FeedDelivery]:
    """The subscriber's items after `after_seq`: already numbered ones first (a resume), then new events
    numbered on from the last seq. Every delivery is provision-logged in the same transaction."""
    start = tx.feed_start(agency.id, purpose.id, _micros(now))
    last_seq, last_event = tx.feed_head(agency.id, purpose.id)
    if after_seq > last_seq:
        raise InvalidField("after_seq", f"{after_seq} is ahead of this feed (last delivered seq is {last_seq})")
    deliveries = [FeedDelivery(seq, e) for seq, e in tx.feed_items(agency.id, purpose.id, after_seq, limit)]
    if len(deliveries) < limit:
        fresh = tx.events_after_id(max(start, last_event), limit - len(deliveries))
        numbered = [(last_seq + i + 1, event_id, e) for i, (event_id, e) in enumerate(fresh)]
        tx.add_feed_items(agency.id, purpose.id, [(seq, event_id) for seq, event_id, _ in numbered])
        deliveries += [FeedDelivery(seq, e) for seq, _, e in numbered]
    if deliveries:
        tx.append_provisions(
            [_provision(now, call, agency, purpose, d.event.resident_code, "feed") for d in deliveries]
        )
        tx.append_access([_access(call, now, purpose, [d.event.resident_code for d in deliveries], "OK")])
    return deliveries


def feed_pending(tx: FeedTx, *, agency: Agency, purpose: Purpose, after_seq: int) -> bool:
    """Whether the subscriber has items after `after_seq` to receive (read only: a feed that does not exist
    yet has none, it starts at the head when first followed)."""
    start = tx.feed_subscription_start(agency.id, purpose.id)
    if start is None:
        return False
    last_seq, last_event = tx.feed_head(agency.id, purpose.id)
    return last_seq > after_seq or bool(tx.events_after_id(max(start, last_event), 1))


def feed_record(event: ChangeEvent) -> CurrentRecord:
    """The record as of a feed event (the items after the change)."""
    status = Status.DELETED if effect_of(event.reason) is Effect.DELETE else Status.ACTIVE
    reg = Registration(
        resident_code=event.resident_code,
        municipality=event.origin,
        items=event.items,
        active=status is Status.ACTIVE,
        reason=event.reason,
        effective_date=event.effective_date,
        recorded_at=event.recorded_at,
        seq=event.seq,
    )
    return CurrentRecord(event.resident_code, status, event.origin, reg)


def _micros(now: dt.datetime) -> int:
    return (now - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _provision(
    now: dt.datetime, call: CallInfo, agency: Agency, purpose: Purpose, code: str, channel: str
) -> ProvisionEntry:
    return ProvisionEntry(now, call.request_id, agency.id, purpose.id, code, sorted_fields(purpose.fields), channel)


@functools.lru_cache(maxsize=256)
def sorted_fields(fields: frozenset[str]) -> tuple[str, ...]:
    """A purpose's fields in a stable order (one tuple per purpose, shared by all its provisions)."""
    return tuple(sorted(fields))


def _access(call: CallInfo, now: dt.datetime, purpose: Purpose, codes: Iterable[str], outcome: str) -> AccessEntry:
    return AccessEntry(
        at=now,
        request_id=call.request_id,
        peer=call.peer,
        method=call.method,
        outcome=outcome,
        purpose=purpose.id,
        subjects=tuple(dict.fromkeys(codes)),
    )

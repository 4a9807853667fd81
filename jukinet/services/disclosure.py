"""Disclosure to a resident (本人確認情報開示, 提供状況開示): everything the network holds on them and
every provision of their data, under every code they have had. Read-only but for its access-log entry."""

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from jukinet.domain.errors import InvalidField
from jukinet.domain.model import ChangeEvent, Registration
from jukinet.domain.registry_state import CurrentRecord
from jukinet.domain.validate import JST
from jukinet.services.history import current_by_code, whole_history
from jukinet.services.ports import AccessEntry, ProvisionEntry
from jukinet.services.relay import CallInfo


class DisclosureTx(Protocol):
    """The center's transaction for a disclosure."""

    def registrations_of(self, codes: Iterable[str]) -> dict[str, list[Registration]]: ...

    def events_of(self, codes: Iterable[str]) -> list[ChangeEvent]:
        """Events recorded under any of the codes, oldest first."""
        ...

    def provisions_of(
        self,
        codes: Sequence[str],
        *,
        since: dt.datetime | None,
        until: dt.datetime | None,
        after_id: int,
        limit: int,
    ) -> list[tuple[int, ProvisionEntry]]:
        """Provisions under any of the codes with since <= at < until, id > after_id, by id, at most limit."""
        ...

    def append_access(self, entries: Sequence[AccessEntry]) -> None: ...


@dataclass(frozen=True, slots=True)
class Period:
    """Provisions at or after `since` and before `until` (either open)."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None


def jst_period(from_date: dt.date | None, to_date: dt.date | None) -> Period:
    """From the start of from_date to the end of to_date, both JST calendar days."""
    if from_date and to_date and from_date > to_date:
        raise InvalidField("from_date", f"{from_date.isoformat()} is after to_date {to_date.isoformat()}")
    since = dt.datetime.combine(from_date, dt.time(), JST) if from_date else None
    until = dt.datetime.combine(to_date + dt.timedelta(days=1), dt.time(), JST) if to_date else None
    return Period(since, until)


@dataclass(frozen=True, slots=True)
class Disclosure:
    record: CurrentRecord
    chain: list[str]  # every code of the resident, oldest first
    history: list[ChangeEvent]  # under every code of the chain, oldest first
    provisions: list[tuple[int, ProvisionEntry]]  # this page, oldest first, with their ids
    more: bool  # another page follows the last id of this one


def disclose(
    tx: DisclosureTx,
    *,
    code: str,
    period: Period,
    after_id: int,
    limit: int,
    call: CallInfo,
    now: dt.datetime,
) -> Disclosure:
    """Raises NotFoundError when nothing is recorded under `code` (the guard logs that refusal);
    otherwise appends the call's access-log entry naming the resident's codes."""
    record, forward = current_by_code(tx, code)
    history = whole_history(tx, forward)
    chain = list(dict.fromkeys([*(e.resident_code for e in history), *forward]))
    page = tx.provisions_of(chain, since=period.since, until=period.until, after_id=after_id, limit=limit + 1)
    tx.append_access(
        [
            AccessEntry(
                at=now,
                request_id=call.request_id,
                peer=call.peer,
                method=call.method,
                outcome="OK",
                subjects=tuple(dict.fromkeys([code, *chain])),
            )
        ]
    )
    return Disclosure(record, chain, history, page[:limit], len(page) > limit)

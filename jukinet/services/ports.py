"""Ports: what the use cases need from storage, as Protocols. jukinet.storage implements them on SQL;
jukinet.testing.memory implements them in memory for unit tests."""

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from jukinet.domain.model import ChangeEvent, EventRow, Registration, RegistrationRow


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """One access-log entry: a call this node served or made."""

    at: dt.datetime
    request_id: str
    peer: str
    method: str
    outcome: str
    direction: str = "served"
    purpose: str = ""
    subjects: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class ProvisionEntry:
    """One record provided to an agency."""

    at: dt.datetime
    request_id: str
    agency: str
    purpose: str
    resident_code: str
    fields: tuple[str, ...]
    channel: str = "lookup"  # lookup | search | bulk | feed


class RelayTx(Protocol):
    """One open transaction on a node's relay tables."""

    def head_seq(self, origin: str) -> int:
        """Highest seq stored for origin, 0 if none."""
        ...

    def insert_event_rows(self, events: Sequence[EventRow], request_ids: Sequence[str] | None = None) -> None:
        """Relayed events, or (municipality) its own events with the register's request ids."""
        ...

    def event_rows_at(self, origin: str, seqs: Sequence[int]) -> dict[int, EventRow]:
        """The stored events of `origin` with these sequence numbers, by seq."""
        ...

    def upsert_registration_rows(self, registrations: Sequence[RegistrationRow]) -> None: ...

    def append_access(self, entries: Sequence[AccessEntry]) -> None: ...


class IntakeTx(RelayTx, Protocol):
    """A municipality node's transaction: its own registrations, request ids and code pool."""

    def registrations_at(self, codes: Iterable[str], municipality: str) -> dict[str, Registration]: ...

    def events_by_request_id(self, request_ids: Iterable[str]) -> dict[str, ChangeEvent]: ...

    def peek_free_codes(self, limit: int) -> list[str]:
        """The pool's next `limit` codes, in the order they are handed out."""
        ...

    def remove_free_codes(self, codes: Sequence[str]) -> None:
        """Removes `codes`, which must be the first len(codes) that peek_free_codes returned."""
        ...

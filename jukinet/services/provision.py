"""Provision to agencies: a lookup by code, limited to the purpose's fields, provision-logged before answering."""

import datetime as dt
from dataclasses import dataclass

from jukinet.domain.agency import Agency, Purpose
from jukinet.domain.errors import NotFoundError
from jukinet.domain.model import ChangeEvent
from jukinet.domain.registry_state import CurrentRecord, Status, current_record
from jukinet.services.ports import AccessEntry, ProvisionEntry, ProvisionTx
from jukinet.services.relay import CallInfo

MAX_CODE_CHANGES = 32  # a resident's chain of retired codes is short; bound the walk anyway


@dataclass(frozen=True, slots=True)
class Provided:
    record: CurrentRecord
    fields: frozenset[str]
    history: list[ChangeEvent]


def lookup(
    tx: ProvisionTx, *, agency: Agency, purpose: Purpose, code: str, call: CallInfo, now: dt.datetime
) -> Provided:
    """The resident's current record (following retired codes to the current one). Raises NotFoundError
    (the caller's guard logs the refusal; nothing is written here then)."""
    chain = [code]
    record = _current(tx, code)
    while record is not None and record.status is Status.RETIRED and len(chain) <= MAX_CODE_CHANGES:
        chain.append(record.replaced_by)
        record = _current(tx, record.replaced_by)
    if record is None or record.status is Status.RETIRED:
        raise NotFoundError(f"no resident is recorded under 住民票コード {code}")
    history = tx.events_of(chain) if "history" in purpose.fields else []
    provided = sorted(purpose.fields)
    tx.append_provisions(
        [ProvisionEntry(now, call.request_id, agency.id, purpose.id, record.resident_code, tuple(provided))]
    )
    tx.append_access([_access(call, now, record.resident_code, purpose, "OK", requested=code)])
    return Provided(record, purpose.fields, history)


def _current(tx: ProvisionTx, code: str) -> CurrentRecord | None:
    registrations = tx.registrations_of([code]).get(code, [])
    return current_record(registrations)


def _access(
    call: CallInfo, now: dt.datetime, code: str, purpose: Purpose, outcome: str, requested: str = ""
) -> AccessEntry:
    subjects = tuple(dict.fromkeys(c for c in (requested, code) if c))
    return AccessEntry(
        at=now,
        request_id=call.request_id,
        peer=call.peer,
        method=call.method,
        outcome=outcome,
        purpose=purpose.id,
        subjects=subjects,
    )

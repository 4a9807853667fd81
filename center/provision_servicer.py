"""ProvisionService: agencies receive 本人確認情報 for a statutory purpose granted to them, one way only."""

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any, TypeAlias

import grpc
import structlog
from sqlalchemy import Connection

from jukinet.domain.agency import Agency, AgencyRegistry, Purpose
from jukinet.domain.errors import InvalidField, JukinetError
from jukinet.domain.model import ChangeEvent, RegistrationRow
from jukinet.domain.registry_state import ACTIVE
from jukinet.domain.validate import iso_date, resident_code, text
from jukinet.observability.metrics import NodeMetrics
from jukinet.rpc import authz
from jukinet.rpc.convert import error_number
from jukinet.rpc.guard import Call, Guard
from jukinet.services.provision import (
    BulkItem,
    FeedDelivery,
    Looked,
    LookupRequest,
    Provided,
    bulk_lookup,
    feed_pending,
    feed_record,
    log_lookups,
    look_up,
    next_feed_items,
    parse_search,
    search,
    sorted_fields,
)
from jukinet.services.quota import Quotas, RateWatch
from jukinet.storage import Store
from jukinet.storage.batcher import WriteBatcher
from jukinet.storage.center_tx import CenterTx
from jukinet.storage.loop_batcher import LoopBatcher
from jukinet.wire.v1 import provision_pb2, provision_pb2_grpc, types_pb2

log = structlog.get_logger(__name__)
MAX_BULK_MESSAGE = 5000
BULK_AHEAD = 2  # bulk messages looked up ahead of the one being answered
# What the bulk reader hands the answering loop: a message's codes, the purpose's fields and the lookup, a
# refusal, or the end.
_BulkStep: TypeAlias = "tuple[list[str], frozenset[str], asyncio.Future[list[BulkItem]]] | Exception | None"
FEED_BATCH = 500
FEED_POLL_S = 0.5


class ProvisionServicer(provision_pb2_grpc.ProvisionServiceServicer):
    def __init__(
        self,
        store: Store,
        guard: Guard,
        registry: AgencyRegistry,
        quotas: Quotas,
        new_events: Callable[[], asyncio.Event] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        if metrics is not None:  # each agency's series exists from the start (alerts watch its first increase)
            for agency_id in registry.agencies:
                metrics.agency_rate_anomalies.labels(agency_id)
        self._rates = RateWatch()
        self._store = store
        self._guard = guard
        self._registry = registry
        self._quotas = quotas
        self._new_events = new_events
        through_writer: WriteBatcher[LookupRequest, Looked] = WriteBatcher(store, _look_up, finish=_log_lookups)
        self._lookups: WriteBatcher[LookupRequest, Looked] | LoopBatcher[LookupRequest, Looked] = through_writer
        if store.dialect == "sqlite":  # see jukinet.storage.loop_batcher
            on_flush = None if metrics is None else metrics.observe_lookup_group
            self._lookups = LoopBatcher(
                store, _look_up, finish=_log_lookups, fallback=through_writer, on_flush=on_flush
            )

    async def close(self) -> None:
        """After the server has stopped: lookups still grouped on the event loop are committed."""
        if isinstance(self._lookups, LoopBatcher):
            self._lookups.close()

    def _grant(self, call: Call, purpose_id: str, items: int = 1) -> tuple[Agency, Purpose]:
        agency, purpose = self._registry.purpose_for(call.caller, purpose_id)
        self._watch(agency)
        self._quotas.charge(agency, items)
        return agency, purpose

    def _watch(self, agency: Agency) -> None:
        rate = self._rates.observe(agency.id)
        if rate is not None:
            log.warning("agency_rate_anomaly", agency=agency.id, rate_per_s=round(rate, 1))
            if self._metrics is not None:
                self._metrics.agency_rate_anomalies.labels(agency.id).inc()

    async def LookupResident(
        self, request: provision_pb2.LookupResidentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> provision_pb2.LookupResidentResponse:
        async with self._guard.call(context, authz.LOOKUP_RESIDENT, purpose=request.purpose[:64]) as call:
            agency, purpose = self._grant(call, request.purpose)
            code = resident_code("resident_code", request.resident_code)
            now = dt.datetime.now(dt.UTC)
            found = await self._lookups.submit(LookupRequest(agency, purpose, code, call.info, now))
            response = provision_pb2.LookupResidentResponse()
            fill_looked(response.record, found, purpose.fields)
            return response
        raise AssertionError("unreachable")

    async def SearchResidents(
        self, request: provision_pb2.SearchResidentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> provision_pb2.SearchResidentsResponse:
        async with self._guard.call(context, authz.SEARCH_RESIDENTS, purpose=request.purpose[:64]) as call:
            agency, purpose = self._grant(call, request.purpose)
            keys = parse_search(
                text("name", request.name, max_chars=100, required=False),
                iso_date("birth_date", request.birth_date).isoformat() if request.birth_date else "",
                _sex(int(request.sex)),
                text("address", request.address, max_chars=200, required=False),
            )
            now = dt.datetime.now(dt.UTC)
            found = await self._store.write(
                lambda conn: search(CenterTx(conn), agency=agency, purpose=purpose, keys=keys, call=call.info, now=now)
            )
            return provision_pb2.SearchResidentsResponse(records=[provided_to_pb(p) for p in found])
        raise AssertionError("unreachable")

    async def LookupResidents(
        self,
        request_iterator: AsyncIterator[provision_pb2.LookupResidentsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[provision_pb2.LookupResidentsResponse]:
        """Messages are answered in order; up to BULK_AHEAD later messages are already being looked up
        (and provision-logged) while one answer is built, so the database and the encoding overlap."""
        async with self._guard.call(context, authz.LOOKUP_RESIDENTS) as call:
            ahead: asyncio.Queue[_BulkStep] = asyncio.Queue(maxsize=BULK_AHEAD)
            reader = asyncio.create_task(self._read_bulk(request_iterator, call, ahead))
            try:
                while (step := await ahead.get()) is not None:
                    if isinstance(step, Exception):
                        raise step
                    raw_codes, fields, lookup = step
                    items = await lookup
                    yield _bulk_response(raw_codes, fields, items)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                while not ahead.empty():  # lookups already under way still commit; nobody awaits them now
                    left = ahead.get_nowait()
                    if isinstance(left, tuple):
                        left[2].add_done_callback(_consume)

    async def _read_bulk(
        self,
        request_iterator: AsyncIterator[provision_pb2.LookupResidentsRequest],
        call: Call,
        ahead: "asyncio.Queue[_BulkStep]",
    ) -> None:
        """Checks each message and starts its lookup; hands (codes, lookup) to the answering loop in order.
        A refusal is handed over as the exception itself, after the lookups before it."""
        granted: tuple[Agency, Purpose] | None = None
        try:
            async for request in request_iterator:
                call.check_open()
                if granted is None:
                    granted = self._registry.purpose_for(call.caller, request.purpose)
                elif request.purpose and request.purpose != granted[1].id:
                    raise InvalidField("purpose", "must stay the same for the whole stream")
                self._watch(granted[0])
                if len(request.resident_codes) > MAX_BULK_MESSAGE:
                    raise InvalidField("resident_codes", f"at most {MAX_BULK_MESSAGE} codes per message")
                agency, purpose = granted
                self._quotas.charge(agency, len(request.resident_codes))
                raw_codes = list(request.resident_codes)
                codes = [_code_or_error(c) for c in raw_codes]
                now = dt.datetime.now(dt.UTC)
                lookup = asyncio.ensure_future(
                    self._store.write(
                        partial(_bulk, agency=agency, purpose=purpose, codes=codes, call=call.info, now=now),
                        isolated=False,  # bulk lookups never raise for one bad item
                    )
                )
                await ahead.put((raw_codes, purpose.fields, lookup))
        except Exception as error:
            await ahead.put(error)
            return
        await ahead.put(None)

    async def FollowChanges(
        self, request: provision_pb2.FollowChangesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[provision_pb2.FollowChangesResponse]:
        async with self._guard.call(context, authz.FOLLOW_CHANGES, purpose=request.purpose[:64]) as call:
            agency, purpose = self._registry.purpose_for(call.caller, request.purpose)
            if request.after_seq < 0:
                raise InvalidField("after_seq", "must not be negative")
            after = request.after_seq
            self._quotas.charge(agency, 0)  # the stream is one request, however long it stays open
            await self._guard.log_served(call, purpose=purpose.id)  # following starts (or resumes) here
            while True:
                call.check_open()
                # Items are reserved before they are numbered and provision-logged, and what is not delivered
                # is given back: a quota refusal never leaves entries for records the agency did not get.
                limit = self._quotas.reserve(agency, FEED_BATCH)
                if limit == 0:
                    pending = partial(_feed_pending, agency=agency, purpose=purpose, after_seq=after)
                    if await self._store.read(pending):
                        self._quotas.charge(agency, 1, rate=False)  # refused: retry after midnight JST
                    await self._wait_for_events()
                    continue
                delivered = 0
                try:
                    now = dt.datetime.now(dt.UTC)
                    deliveries = await self._store.write(
                        partial(
                            _feed, agency=agency, purpose=purpose, after_seq=after, limit=limit, call=call.info, now=now
                        )
                    )
                    delivered = len(deliveries)
                finally:
                    self._quotas.refund(agency, limit - delivered)
                if deliveries:
                    after = deliveries[-1].seq
                    yield provision_pb2.FollowChangesResponse(
                        items=[
                            provision_pb2.FeedItem(
                                seq=d.seq,
                                change=_change_pb(d.event),
                                record=provided_to_pb(Provided(feed_record(d.event), purpose.fields, [])),
                            )
                            for d in deliveries
                        ]
                    )
                    continue
                await self._wait_for_events()

    async def _wait_for_events(self) -> None:
        if self._new_events is None:
            await asyncio.sleep(FEED_POLL_S)
            return
        event = self._new_events()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=FEED_POLL_S)


def _consume(future: "asyncio.Future[Any]") -> None:
    """Retrieves an abandoned lookup's outcome, so a failure is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


def _look_up(conn: Connection, requests: Sequence[LookupRequest]) -> list[Looked | JukinetError]:
    return look_up(CenterTx(conn), requests)


def _log_lookups(conn: Connection, requests: Sequence[LookupRequest], results: Sequence[Looked | Exception]) -> None:
    log_lookups(CenterTx(conn), requests, results)


def _bulk(conn: Connection, **kwargs: Any) -> list[BulkItem]:
    return bulk_lookup(CenterTx(conn), **kwargs)


def _feed(conn: Connection, **kwargs: Any) -> list[FeedDelivery]:
    return next_feed_items(CenterTx(conn), **kwargs)


def _feed_pending(conn: Connection, *, agency: Agency, purpose: Purpose, after_seq: int) -> bool:
    return feed_pending(CenterTx(conn), agency=agency, purpose=purpose, after_seq=after_seq)


def _sex(value: int) -> int:
    if value not in (0, types_pb2.SEX_MALE, types_pb2.SEX_FEMALE):
        raise InvalidField("sex", f"{value} is not a known sex value")
    return value


def _code_or_error(value: str) -> str | InvalidField:
    try:
        return resident_code("resident_code", value)
    except InvalidField as error:
        return error


def _bulk_response(
    raw_codes: Sequence[str], fields: frozenset[str], items: Sequence[BulkItem]
) -> provision_pb2.LookupResidentsResponse:
    """One result per code, in order. Built in place (results.add, fields set on the nested messages):
    constructing each record and then copying it into its result costs about twice as much."""
    response = provision_pb2.LookupResidentsResponse()
    add = response.results.add
    for raw, item in zip(raw_codes, items, strict=True):
        if item.row is not None:
            fill_record_from_row(add(resident_code=raw).record, item.row, fields)
            continue
        if item.provided is not None:
            fill_record(add(resident_code=raw).record, item.provided)
            continue
        assert item.error is not None  # noqa: S101 - an item has either a record or an error
        add(resident_code=raw[:11], status_code=error_number(item.error), message=str(item.error))
    return response


def _change_pb(e: ChangeEvent) -> provision_pb2.ProvidedChange:
    return provision_pb2.ProvidedChange(
        resident_code=e.resident_code,
        previous_code=e.previous_code,
        reason=int(e.reason),  # type: ignore[arg-type]
        effective_date=e.effective_date.isoformat(),
        municipality_code=e.origin,
    )


def provided_to_pb(provided: Provided) -> provision_pb2.ProvidedRecord:
    record = provision_pb2.ProvidedRecord()
    fill_record(record, provided)
    return record


def fill_looked(target: provision_pb2.ProvidedRecord, found: Looked, fields: frozenset[str]) -> None:
    """A unary lookup's answer (look_up's result: a record provided, or the stored row of the shortcut)."""
    if isinstance(found, Provided):
        fill_record(target, found)
    else:
        fill_record_from_row(target, found, fields)


def fill_record_from_row(target: provision_pb2.ProvidedRecord, row: RegistrationRow, fields: frozenset[str]) -> None:
    """fill_record for an active registration as stored (bulk_lookup's BulkItem.row): the same message."""
    code, municipality, _, _, _, _, _, _, name, alias, birth_date, sex, address = row
    target.resident_code = code
    target.status = provision_pb2.RESIDENT_STATUS_ACTIVE
    target.municipality_code = municipality
    out = target.items
    out.SetInParent()
    if "name" in fields:
        out.name = name
    if "alias" in fields:
        out.alias = alias
    if "birth_date" in fields:
        out.birth_date = birth_date  # stored as YYYY-MM-DD, as date.isoformat() writes it
    if "sex" in fields:
        out.sex = sex  # type: ignore[assignment]
    if "address" in fields:
        out.address = address
    target.provided_fields.extend(sorted_fields(fields))


def fill_record(target: provision_pb2.ProvidedRecord, provided: Provided) -> None:
    """Only the purpose's fields are filled in; the others stay empty on the wire."""
    current = provided.record
    items = current.registration.items
    fields = provided.fields
    target.resident_code = current.resident_code
    active = current.status is ACTIVE
    target.status = provision_pb2.RESIDENT_STATUS_ACTIVE if active else provision_pb2.RESIDENT_STATUS_DELETED
    target.municipality_code = current.holder
    out = target.items
    out.SetInParent()
    if "name" in fields:
        out.name = items.name
    if "alias" in fields:
        out.alias = items.alias
    if "birth_date" in fields:
        out.birth_date = items.birth_date.isoformat()
    if "sex" in fields:
        out.sex = int(items.sex)  # type: ignore[assignment]
    if "address" in fields:
        out.address = items.address
    if provided.history:
        target.history.extend([_change_pb(e) for e in provided.history])
    target.provided_fields.extend(sorted_fields(fields))

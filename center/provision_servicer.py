"""ProvisionService: agencies receive 本人確認情報 for a statutory purpose granted to them, one way only."""

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import grpc
import structlog
from sqlalchemy import Connection

from jukinet.domain.agency import Agency, AgencyRegistry, Purpose
from jukinet.domain.errors import InvalidField
from jukinet.domain.model import ChangeEvent
from jukinet.domain.registry_state import Status
from jukinet.domain.validate import iso_date, resident_code, text
from jukinet.observability.metrics import NodeMetrics
from jukinet.rpc import authz
from jukinet.rpc.convert import error_number
from jukinet.rpc.guard import Call, Guard
from jukinet.services.provision import (
    BulkItem,
    FeedDelivery,
    Provided,
    bulk_lookup,
    feed_record,
    lookup,
    next_feed_items,
    parse_search,
    search,
)
from jukinet.services.quota import Quotas, RateWatch
from jukinet.storage import Store
from jukinet.storage.center_tx import CenterTx
from jukinet.wire.v1 import provision_pb2, provision_pb2_grpc, types_pb2

log = structlog.get_logger(__name__)
MAX_BULK_MESSAGE = 5000
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
        self._rates = RateWatch()
        self._store = store
        self._guard = guard
        self._registry = registry
        self._quotas = quotas
        self._new_events = new_events

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
            provided = await self._store.write(
                lambda conn: lookup(CenterTx(conn), agency=agency, purpose=purpose, code=code, call=call.info, now=now),
                isolated=False,  # lookup raises only before it writes
            )
            return provision_pb2.LookupResidentResponse(record=provided_to_pb(provided))
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
        async with self._guard.call(context, authz.LOOKUP_RESIDENTS) as call:
            granted: tuple[Agency, Purpose] | None = None
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
                codes = [_code_or_error(c) for c in request.resident_codes]
                now = dt.datetime.now(dt.UTC)
                items = await self._store.write(
                    partial(_bulk, agency=agency, purpose=purpose, codes=codes, call=call.info, now=now),
                    isolated=False,  # bulk lookups never raise for one bad item
                )
                yield provision_pb2.LookupResidentsResponse(
                    results=[_bulk_result(raw, item) for raw, item in zip(request.resident_codes, items, strict=True)]
                )

    async def FollowChanges(
        self, request: provision_pb2.FollowChangesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[provision_pb2.FollowChangesResponse]:
        async with self._guard.call(context, authz.FOLLOW_CHANGES, purpose=request.purpose[:64]) as call:
            agency, purpose = self._registry.purpose_for(call.caller, request.purpose)
            if request.after_seq < 0:
                raise InvalidField("after_seq", "must not be negative")
            after = request.after_seq
            while True:
                call.check_open()
                self._quotas.charge(agency, 0)
                now = dt.datetime.now(dt.UTC)
                deliveries = await self._store.write(
                    partial(_feed, agency=agency, purpose=purpose, after_seq=after, call=call.info, now=now)
                )
                if deliveries:
                    self._quotas.charge(agency, len(deliveries), rate=False)
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


def _bulk(conn: Connection, **kwargs: Any) -> list[BulkItem]:
    return bulk_lookup(CenterTx(conn), **kwargs)


def _feed(conn: Connection, **kwargs: Any) -> list[FeedDelivery]:
    return next_feed_items(CenterTx(conn), limit=FEED_BATCH, **kwargs)


def _sex(value: int) -> int:
    if value not in (0, types_pb2.SEX_MALE, types_pb2.SEX_FEMALE):
        raise InvalidField("sex", f"{value} is not a known sex value")
    return value


def _code_or_error(value: str) -> str | InvalidField:
    try:
        return resident_code("resident_code", value)
    except InvalidField as error:
        return error


def _bulk_result(raw: str, item: BulkItem) -> provision_pb2.LookupResult:
    if item.provided is not None:
        return provision_pb2.LookupResult(resident_code=raw, status_code=0, record=provided_to_pb(item.provided))
    assert item.error is not None  # noqa: S101 - an item has either a record or an error
    return provision_pb2.LookupResult(
        resident_code=raw[:11], status_code=error_number(item.error), message=str(item.error)
    )


def _change_pb(e: ChangeEvent) -> provision_pb2.ProvidedChange:
    return provision_pb2.ProvidedChange(
        resident_code=e.resident_code,
        previous_code=e.previous_code,
        reason=int(e.reason),  # type: ignore[arg-type]
        effective_date=e.effective_date.isoformat(),
        municipality_code=e.origin,
    )


def provided_to_pb(provided: Provided) -> provision_pb2.ProvidedRecord:
    """Only the purpose's fields are filled in; the others stay empty on the wire."""
    reg = provided.record.registration
    fields = provided.fields
    items = reg.items
    return provision_pb2.ProvidedRecord(
        resident_code=provided.record.resident_code,
        status=(
            provision_pb2.RESIDENT_STATUS_ACTIVE
            if provided.record.status is Status.ACTIVE
            else provision_pb2.RESIDENT_STATUS_DELETED
        ),
        municipality_code=provided.record.holder,
        items=types_pb2.IdentityItems(
            name=items.name if "name" in fields else "",
            alias=items.alias if "alias" in fields else "",
            birth_date=items.birth_date.isoformat() if "birth_date" in fields else "",
            sex=int(items.sex) if "sex" in fields else 0,  # type: ignore[arg-type]
            address=items.address if "address" in fields else "",
        ),
        history=[_change_pb(e) for e in provided.history],
        provided_fields=sorted(fields),
    )

"""DisclosureService: the center's operators disclose to a resident what the network holds on them and
every provision of their data (本人確認情報開示, 提供状況開示). Each call is access-logged."""

import datetime as dt
from typing import Any

import grpc

from center.provision_servicer import provided_to_pb
from jukinet.domain.agency import PROVIDABLE_FIELDS, AgencyRegistry
from jukinet.domain.errors import InvalidField
from jukinet.domain.identity import NodeId
from jukinet.domain.validate import iso_date, page_token, resident_code
from jukinet.rpc import authz
from jukinet.rpc.convert import timestamp
from jukinet.rpc.guard import Guard
from jukinet.services.disclosure import disclose, jst_period
from jukinet.services.ports import ProvisionEntry
from jukinet.services.provision import Provided
from jukinet.storage import Store
from jukinet.storage.provision_queries import DisclosureSqlTx
from jukinet.wire.v1 import disclosure_pb2, disclosure_pb2_grpc

MAX_PAGE = 1000
DEFAULT_PAGE = 100
ALL_FIELDS = frozenset(PROVIDABLE_FIELDS)


class DisclosureServicer(disclosure_pb2_grpc.DisclosureServiceServicer):
    def __init__(self, node: NodeId, store: Store, guard: Guard, registry: AgencyRegistry) -> None:
        self._node = node
        self._store = store
        self._guard = guard
        self._registry = registry

    async def DiscloseResident(
        self, request: disclosure_pb2.DiscloseResidentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> disclosure_pb2.DiscloseResidentResponse:
        async with self._guard.call(context, authz.DISCLOSE_RESIDENT) as call:
            authz.check_operator_of(call.caller, self._node)
            code = resident_code("resident_code", request.resident_code)
            period = jst_period(
                iso_date("from_date", request.from_date) if request.from_date else None,
                iso_date("to_date", request.to_date) if request.to_date else None,
            )
            if request.page_size < 0:
                raise InvalidField("page_size", "must not be negative")
            limit = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
            after_id = page_token("page_token", request.page_token) or 0
            now = dt.datetime.now(dt.UTC)
            found = await self._store.write(
                lambda conn: disclose(
                    DisclosureSqlTx(conn),
                    code=code,
                    period=period,
                    after_id=after_id,
                    limit=limit,
                    call=call.info,
                    now=now,
                )
            )
            record = provided_to_pb(Provided(found.record, ALL_FIELDS, found.history))
            return disclosure_pb2.DiscloseResidentResponse(
                record=record,
                provisions=[self._provision_to_pb(entry) for _, entry in found.provisions],
                next_page_token=str(found.provisions[-1][0]) if found.more and found.provisions else "",
            )
        raise AssertionError("unreachable")

    def _provision_to_pb(self, entry: ProvisionEntry) -> disclosure_pb2.Provision:
        """Display names from the registry as it is now; the ids alone for an agency or purpose since removed."""
        agency = self._registry.agencies.get(entry.agency)
        purpose = agency.purposes.get(entry.purpose) if agency else None
        return disclosure_pb2.Provision(
            time=timestamp(entry.at),
            agency=entry.agency,
            agency_name=agency.name if agency else entry.agency,
            purpose=entry.purpose,
            purpose_name=purpose.name if purpose else entry.purpose,
            fields=list(entry.fields),
            resident_code=entry.resident_code,
            channel=entry.channel,
        )
